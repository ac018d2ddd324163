"""TextGuidedSegLib: text-guided CT segmentation, the library behind the TextGuidedSeg 3D Slicer extension.

A CT volume and a text prompt go in; one binary mask per named structure comes out, on the input's own grid.
The library imports no ``slicer``, ``qt`` or ``vtk``: it runs inside Slicer's Python and on training clusters.

Sub-packages, one concern each:

- ``taxonomy``: the structures a model knows (names, synonyms, laterality, Slicer terminology codes) and the
  prompt parser that turns free text into structure queries.
- ``text``: the frozen CLIP text encoder and the prompt -> embedding cache.
- ``models``: FiLM-conditioned SwinUNETR (v1 decoder FiLM, v2 encoder FiLM), the Universal Model and the
  text-free SwinUNETR / UNETR baselines, all behind one call.
- ``io``: reading CT volumes (NIfTI, NRRD, DICOM series) and writing label maps on the input grid.
- ``inference``: geometry (orientation, spacing, back-resampling), intensity windowing, sliding-window
  prediction and post-processing.
- ``bundle``: a trained model as a folder or .zip (config JSON + safetensors weights + embedding cache).
- ``data``, ``training``, ``evaluation``: list files and label transfer, the DDP trainer, Dice/NSD reports.
- ``clipseg``: CLIPSeg on 2D slices (fine-tuning strategies, frozen-encoder cache, benchmark) and its 2D->3D
  engine, so CLIPSeg bundles segment volumes through the same ``Segmenter``.
- ``registry``: the bundle registry and per-user cache (downloads, offline import).
- ``cli``: the ``textguidedseg`` command.

Glossary (one name for one thing, in code, config keys, CLI flags and docs):

- ``prompt``: the text a user types ("liver and both kidneys"), or the text fed to the text encoder.
- ``structure``: an anatomical structure the taxonomy knows (never "organ" in identifiers).
- ``class_name``: a structure's canonical key, snake_case (``"right_kidney"``).
- ``label_id``: an integer value in a label map. In a taxonomy, label ids are 1-based in taxonomy order;
  in a segmentation output, label ids follow the order of the structure queries (1 = first query).
- ``query``: one structure (or free-text phrase) to segment; a model returns one mask per query.
- ``logits``: raw network outputs; ``probabilities`` are their sigmoid. Never called one another.
- ``embedding``: a text vector of size ``E`` (512 for CLIP ViT-B/32).
- ``options``: ``SegmentationOptions`` fields, one name in every layer (dataclass, CLI flag, Slicer parameter
  node, request body): ``device``, ``precision``, ``overlap``, ``threshold``, ``sw_batch_size``,
  ``largest_component``, ``split_laterality``, ``flip_tta`` (test-time flips; with probabilities, an
  uncertainty map), ``probabilities``, ``force`` (run on input the guard finds implausible). ``None`` is
  "the bundle's value".
- Tensor axes: image ``(B, 1, D, H, W)``, text embeddings ``(B, Q, E)``, logits ``(B, Q, D, H, W)``.
  Volumes read from disk are ``(I, J, K)`` arrays with a voxel-to-RAS (mm) affine.
"""

__version__ = "0.1.0"
