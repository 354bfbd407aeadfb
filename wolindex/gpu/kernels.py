"""The CUDA source of the GPU engine (kernels.cu beside this file) and the names of its kernels."""
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.cu")
THREADS = 256                   # WOL_THREADS: threads per block of every kernel
KMAX = 32                       # WOL_KMAX: the largest k the kernels select
DMAX = 4096                     # WOL_DMAX: the largest dimension of the fused kernel
ROW_TYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}   # row storage -> kernel suffix
KERNELS = ["topk_rows"] + [f"{kind}_candidates_{suffix}" for kind in ("fused", "tile")
                           for suffix in ROW_TYPES.values()]
TILE_ROWS = 64                  # WOL_TILE_ROWS, WOL_TILE_QUERIES: the tile kernel's block shape
TILE_QUERIES = 32
