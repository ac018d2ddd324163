"""Evaluate a bundle on a list of labelled cases: the job of ``textguidedseg evaluate``, same options.

Run it after training, on the validation or test list the trainer read (``image<TAB>label`` lines)::

    python Training/evaluate.py --bundle runs/phantom/bundle --list phantoms/val.txt -o runs/phantom/eval
    python Training/evaluate.py -b bundle.zip -l lists/btcv_test.txt --data-root /data -o eval_btcv \\
        --structures "liver, spleen, kidneys" --save-predictions

It writes ``metrics.csv`` (Dice and NSD per case and structure), ``summary.md``, ``dice_boxplot.png`` and,
with ``--save-predictions``, the predicted label maps (see ``TextGuidedSegLib.evaluation``).
"""

from __future__ import annotations

import sys

from TextGuidedSegLib.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
