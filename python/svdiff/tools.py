"""Functions around the models and runs: describing a model without loading it, latents files
(`svdiff generate --init-latents / --save-latents`), PSNR, output checks and a run folder's lock."""
import ctypes
import json
import os

from . import _api, _image, _lib
from ._errors import check, encode, take_string


def describe_model(path, tokenizer=None, prediction_type=None, scheduler_config=None):
    """What `svdiff info --json` prints less its timing (open_ms, peak_rss_kb), as a dict: path,
    layout, components (unet, vae, text_encoder: present, tensors, parameters, bytes, dtypes,
    config), scheduler, prediction_type {value, source, guessed}, tokenizer, files, mapped_bytes,
    total_parameters, total_bytes. Only the files' headers and configs are read."""
    lib = _lib.load()
    p = lib.svdiff_model_default_params()
    keep = [encode(tokenizer), encode(prediction_type), encode(scheduler_config)]
    p.tokenizer_dir, p.prediction_type, p.scheduler_config = keep
    txt = ctypes.c_void_p()
    check(lib.svdiff_model_describe(encode(os.fspath(path)), ctypes.byref(p), ctypes.byref(txt)))
    return json.loads(take_string(txt))


def _shape4(shape):
    shape = tuple(int(x) for x in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError("latents shape must be (n, channels, height, width), got %r" % (shape,))
    return shape


def read_latents(path, shape):
    """A latents file as `svdiff generate --init-latents` reads it, for shape (n, channels, lh, lw)
    (channels, lh, lw from Model.latent_shape): the file's tensor must be [n or 1, channels, lh,
    lw] (one row is repeated n times) and finite. A float32 numpy array of that shape, or a flat
    list without numpy."""
    n, c, lh, lw = _shape4(shape)
    buf = (ctypes.c_float * (n * c * lh * lw))()
    check(_lib.load().svdiff_latents_read(encode(os.fspath(path)), n, c, lh, lw, buf))
    if _image.have_numpy():
        return _image._np.frombuffer(bytes(buf), dtype=_image._np.float32).reshape(n, c, lh, lw).copy()
    return list(buf)


def write_latents(path, latents, shape=None, metadata=None):
    """Writes latents [n, channels, lh, lw] as `svdiff generate --save-latents` does (tensor
    "latents", F32, atomically): latents a 4-D numpy array, or a flat sequence with shape given.
    metadata: a dict of strings (the CLI writes prompt, seed and sampler); svdiff_version is added.
    Returns path."""
    if shape is None:
        shape = getattr(latents, "shape", None)
        if shape is None:
            raise ValueError("write_latents: give shape=(n, channels, lh, lw) for a flat sequence")
    n, c, lh, lw = _shape4(shape)
    if hasattr(latents, "astype") and hasattr(latents, "ravel"):
        data = latents.astype("float32").ravel().tobytes()
        arr = (ctypes.c_float * (len(data) // 4)).from_buffer_copy(data)
    else:
        values = [float(x) for x in latents]
        arr = (ctypes.c_float * len(values))(*values)
    if len(arr) != n * c * lh * lw:
        raise ValueError("write_latents: %d values for shape %r" % (len(arr), (n, c, lh, lw)))
    items = [] if not metadata else [encode(str(x)) for kv in metadata.items() for x in kv]
    meta = (ctypes.c_char_p * max(1, len(items)))(*items)
    check(_lib.load().svdiff_latents_write(encode(os.fspath(path)), arr, n, c, lh, lw, meta, len(items) // 2))
    return path


def psnr(a, b):
    """PSNR in dB of two RGB8 images of the same size (peak 255; inf when equal), as `svdiff edit` reports it."""
    da, wa, ha = _image.to_rgb(a)
    db, wb, hb = _image.to_rgb(b)
    if (wa, ha) != (wb, hb):
        raise ValueError("psnr: images of %dx%d and %dx%d" % (wa, ha, wb, hb))
    ba = (ctypes.c_uint8 * len(da)).from_buffer_copy(da)
    bb = (ctypes.c_uint8 * len(db)).from_buffer_copy(db)
    return _lib.load().svdiff_psnr(ba, bb, len(da))


def check_output(path):
    """Raises svdiff.Error (ERR_IO, naming path) when path exists and is not a regular file (a
    device, a fifo, a folder): what every writer of the library refuses."""
    check(_lib.load().svdiff_output_check(encode(os.fspath(path))))
    return path


class FolderLock:
    """The lock of a run's output folder (`svdiff train / pretrain / edit` hold it for a run): a second
    run into the folder fails at once; taking it removes temp files killed runs left. A context
    manager: with svdiff.FolderLock("out"): ...; release() ends it early."""

    def __init__(self, folder):
        self.folder, self._h = os.fspath(folder), ctypes.c_void_p()
        check(_lib.load().svdiff_folder_lock(encode(self.folder), ctypes.byref(self._h)))

    def release(self):
        if self._h:
            _lib.load().svdiff_folder_unlock(self._h)
            self._h = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass
