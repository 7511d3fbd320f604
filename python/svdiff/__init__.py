"""svdiff: Python bindings of libsvdiff (spectral-shift personalisation of diffusion models).

ctypes over the shared library (see svdiff._lib for where it is looked for; SVDIFF_LIB names it),
standard library only; numpy is used when importable (images as (H, W, 3) uint8 arrays).

    import svdiff
    with svdiff.Model("models/emoji-32", threads=2) as m:
        images = m.generate("an emoji of a cat", steps=20, cfg=1.5, seed=1, output="cat.png")
    svdiff.train(model="models/emoji-32", instance_dir="cats/", instance_prompt="an emoji of sks cat",
                 output_dir="out", steps=100, progress=print)
    s = svdiff.Shifts.load("out"); (s * 0.5).save("half")
"""
from . import _lib

_lib.preload()   # before numpy (see _lib.preload); sets OMP_WAIT_POLICY=passive unless set

from ._api import (ERR_ARG, ERR_CANCELLED, ERR_FORMAT, ERR_IO, ERR_NOMEM, ERR_NUMERIC, ERR_SHAPE,  # noqa: E402
                   ERR_UNSUPPORTED, OK)
from ._callbacks import Progress  # noqa: E402
from ._errors import Cancelled, Error  # noqa: E402
from ._image import Image, have_numpy  # noqa: E402
from ._lib import LibraryNotFound  # noqa: E402
from .model import SAMPLERS, EditResult, Images, Model, grid, read_image, write_png  # noqa: E402
from .shifts import Shifts  # noqa: E402
from .tools import FolderLock, check_output, describe_model, psnr, read_latents, write_latents  # noqa: E402
from .train import pretrain, train  # noqa: E402

__version__ = "0.1.0"


def version():
    """The version of the loaded libsvdiff ("MAJOR.MINOR.PATCH")."""
    from . import _lib
    return _lib.load().svdiff_version().decode()


def library_path():
    """The libsvdiff.so file in use."""
    from . import _lib
    return _lib.path()


def set_threads(n):
    """Compute threads of the process (OpenMP and BLAS); n <= 0: the default."""
    from . import _lib
    _lib.load().svdiff_set_threads(int(n))


__all__ = ["Model", "Images", "EditResult", "Shifts", "train", "pretrain", "describe_model", "read_latents",
           "write_latents", "psnr", "check_output", "FolderLock", "Error", "Cancelled", "LibraryNotFound", "Progress",
           "Image", "have_numpy", "read_image", "write_png", "grid", "SAMPLERS", "version", "library_path",
           "set_threads", "OK", "ERR_IO", "ERR_FORMAT", "ERR_SHAPE", "ERR_NOMEM", "ERR_ARG", "ERR_NUMERIC",
           "ERR_CANCELLED", "ERR_UNSUPPORTED"]
