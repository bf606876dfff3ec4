"""Writes gilbert3d_official.npz: the official Video-BLADE 3D Gilbert curve order
(ziplab/VIDEO-BLADE ``wanx/train/special_attentions_local/utils/gilbert3d.py``, ``gilbert3d``)
as linear indices ``x + W * (y + H * z)`` on small odd grids (the order GilbertRearranger
applies). One-off: run with the official file's directory as argument; tests read the .npz."""

import os
import sys

import numpy as np

SHAPES = [(5, 3, 2), (4, 3, 3), (3, 5, 7), (7, 2, 3), (6, 4, 5), (2, 9, 3), (1, 4, 5), (13, 10, 7), (9, 9, 1),
          (3, 3, 3), (8, 6, 4), (11, 5, 3)]

if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    from gilbert3d_official import gilbert3d

    out = {}
    for w, h, d in SHAPES:
        out[f"{w}x{h}x{d}"] = np.array([x + w * (y + h * z) for x, y, z in gilbert3d(w, h, d)], dtype=np.int32)
    np.savez_compressed(os.path.join(os.path.dirname(__file__), "gilbert3d_official.npz"), **out)
