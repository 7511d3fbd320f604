"""svdiff.train: training spectral shifts (or full / LoRA baselines) as `svdiff train` does."""
import ctypes
import os

from . import _api, _lib
from ._callbacks import Hooks
from ._errors import check, encode
from .model import _image_struct

# keyword -> field of svdiff_train_params_t (the named settings; the rest go as "name=value")
_FIELDS = {
    "tokenizer": "tokenizer_dir", "prediction_type": "prediction_type", "scheduler_config": "scheduler_config",
    "class_dir": "class_dir", "class_prompt": "class_prompt", "num_class_images": "num_class_images",
    "resolution": "resolution", "steps": "steps", "batch_size": "batch_size", "grad_accum": "grad_accum",
    "lr": "lr", "lr_1d": "lr_1d", "seed": "seed", "train_text_encoder": "train_text_encoder", "rank": "rank",
    "checkpoint_every": "checkpoint_every", "resume": "resume", "force": "force", "save_fp16": "save_fp16",
    "svd_cache_dir": "svd_cache_dir", "threads": "threads",
}
_STRINGS = {"tokenizer_dir", "prediction_type", "scheduler_config", "class_dir", "class_prompt", "svd_cache_dir"}
_BOOLS = {"train_text_encoder", "resume", "force", "save_fp16"}


_REPEATED = {"subject", "subject-class", "sample-prompt"}   # the flags given once per value


def _setting(name, value):
    """A keyword setting as the "name=value" strings of the C API (the CLI flag without "--"):
    True a switch, False its negation, a list one entry per value for the repeatable flags
    (subject, subject_class, sample_prompt) and comma-separated for the others."""
    flag = name.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:
        return ["%s=0" % flag]
    if isinstance(value, (list, tuple)):
        if flag in _REPEATED:
            return ["%s=%s" % (flag, v) for v in value]
        value = ",".join(str(v) for v in value)
    return ["%s=%s" % (flag, value)]


def _images(images):
    """An svdiff_image_t array over in-memory images; (array, buffers to keep alive)."""
    structs, keep = [], []
    for img in images:
        s, buf = _image_struct(img)
        structs.append(s)
        keep.append(buf)
    return (_api.ImageStruct * len(structs))(*structs), keep


def train(model, output_dir, instance_prompt, instance_dir=None, instance_images=None, class_images=None,
          mode="shifts", progress=None, cancel=None, **settings):
    """Trains and writes output_dir exactly as `svdiff train` does with the same settings and
    threads (spectral_shifts(_te).safetensors, loss.csv, checkpoints).

    model: a model path. Instance images: instance_dir (a folder) or instance_images (a list of
    (H, W, 3) uint8 arrays, svdiff.Image or PIL images); class images likewise (class_dir or
    class_images) with class_prompt. mode: "shifts", "full" or "lora". progress(p) gets
    svdiff.Progress per step (stages "class_images" and "train"); cancel() returning true stops
    within one step (svdiff.Cancelled; with checkpoint_every > 0 the checkpoint of the last finished
    step resumes with resume=True). Named settings: tokenizer, prediction_type, scheduler_config,
    class_dir, class_prompt, num_class_images, resolution, steps, batch_size, grad_accum, lr, lr_1d,
    seed, train_text_encoder, rank, checkpoint_every, resume, force, save_fp16, svd_cache_dir,
    threads; any other keyword is a setting of the training table named like its CLI flag
    (lr_schedule="cosine", warmup=10, prior_loss_weight=0.5, flip=True, sample_prompt=["a", "b"],
    subject=["sks cat=cats/", "hta dog=dogs/"] instead of instance_dir). Returns output_dir."""
    lib = _lib.load()
    if mode not in _api.TRAIN_MODES:
        raise ValueError("mode must be one of %s, got %r" % (", ".join(_api.TRAIN_MODES), mode))
    if instance_dir is not None and instance_images is not None:
        raise ValueError("train: give instance_dir or instance_images, not both")
    if instance_dir is None and instance_images is None and not settings.get("subject") and not settings.get("data"):
        raise ValueError("train: give instance_dir, instance_images, data=\"CAPTIONS.tsv\" or subject=[\"PHRASE=DIR\", ...]")
    return _run(lib.svdiff_train_default_params(), lib.svdiff_train, model, output_dir, instance_prompt, instance_dir,
                instance_images, class_images, mode, progress, cancel, settings)


def pretrain(model, output_dir, data, mode=None, progress=None, cancel=None, **settings):
    """Pretraining as `svdiff pretrain` does (same files and bytes for the same settings and
    threads): every weight of `model` trained on the captioned data set `data` (a TSV, rows
    "path<TAB>caption[<TAB>split]"); output_dir becomes a diffusers model folder. Settings as
    svdiff.train (named ones, or any `svdiff pretrain` flag by name: image_root="imgs/",
    ema_decay=0.9, save_dtype="fp16", sample_every=3, sample_prompt=["a dog"]); mode None keeps
    pretrain's default (full). Returns output_dir."""
    lib = _lib.load()
    p = lib.svdiff_pretrain_default_params()
    if mode is not None:
        if mode not in _api.TRAIN_MODES:
            raise ValueError("mode must be one of %s, got %r" % (", ".join(_api.TRAIN_MODES), mode))
        p.mode = _api.TRAIN_MODES[mode]
    settings = dict(settings, data=data)
    return _run(p, lib.svdiff_pretrain, model, output_dir, None, None, None, None, None, progress, cancel, settings)


def _run(p, fn, model, output_dir, instance_prompt, instance_dir, instance_images, class_images, mode, progress,
         cancel, settings):
    """Fills the params struct p (from *_default_params) and runs fn (svdiff_train / svdiff_pretrain)."""
    keep = []

    def s(v):
        keep.append(encode(v))
        return keep[-1]

    p.model, p.out_dir, p.instance_prompt = s(os.fspath(model)), s(os.fspath(output_dir)), s(instance_prompt)
    if mode is not None:
        p.mode = _api.TRAIN_MODES[mode]
    if instance_dir is not None:
        p.instance_dir = s(instance_dir)
    elif instance_images is not None:
        arr, bufs = _images(instance_images)
        keep += [arr, bufs]
        p.instance_images, p.n_instance_images = arr, len(bufs)
    if class_images is not None:
        arr, bufs = _images(class_images)
        keep += [arr, bufs]
        p.class_images, p.n_class_images = arr, len(bufs)
    others = []
    for key, value in settings.items():
        if value is None:
            continue
        field = _FIELDS.get(key)
        if field is None:
            others += _setting(key, value)
        elif field in _STRINGS:
            setattr(p, field, s(value))
        elif field in _BOOLS:
            setattr(p, field, 1 if value else 0)
        else:
            setattr(p, field, value)
    if others:
        arr = (ctypes.c_char_p * len(others))(*[encode(o) for o in others])
        keep.append(arr)
        p.settings, p.n_settings = arr, len(others)
    hooks = Hooks(progress, cancel)
    p.callbacks = hooks.struct
    with hooks:
        rc = fn(ctypes.byref(p))
    hooks.reraise()
    check(rc)
    return output_dir
