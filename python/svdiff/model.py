"""svdiff.Model: an opened model; generate, adapters (shifts, LoRA, delta), edit, PNG writing."""
import collections
import ctypes
import os

from . import _api, _image, _lib
from ._callbacks import Hooks
from ._errors import Error, check, encode, make, take_string

SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m")


def _sampler(name):
    lib = _lib.load()
    out = ctypes.c_int()
    check(lib.svdiff_sampler_parse(encode(name), ctypes.byref(out)))
    return out.value


def _take_images(ptr, n):
    """Copies n library images into Python images and frees the library's array."""
    lib = _lib.load()
    try:
        return [_image.from_buffer(ptr[k].rgb, ptr[k].width, ptr[k].height) for k in range(n)]
    finally:
        lib.svdiff_images_free(ptr, n)


def write_png(path, image, parameters=None):
    """Writes an RGB8 image as a PNG exactly as the CLI does: a 'parameters' text chunk when
    parameters is given (Model.png_parameters) and 'Software: svdiff VERSION'; through a temp file
    and a rename (no half file)."""
    data, w, h = _image.to_rgb(image)
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    check(_lib.load().svdiff_png_write(encode(path), buf, w, h, encode(parameters)))
    return path


def read_image(path):
    """A PNG or JPEG as an RGB8 image ((H, W, 3) uint8 array, or svdiff.Image without numpy)."""
    lib = _lib.load()
    out = ctypes.POINTER(_api.ImageStruct)()
    check(lib.svdiff_image_read(encode(path), ctypes.byref(out)))
    return _take_images(out, 1)[0]


def numbered_path(path, k):
    """The CLI's name of image k (1-based) of several: "out.png" -> "out-3.png"."""
    stem, ext = os.path.splitext(path)
    return "%s-%d%s" % (stem, k, ext)


def grid(images, cols=0, pad=2):
    """The sample sheet of images of one size (as `svdiff generate` draws it for several images:
    cols 0 = about square, pad 2 white pixels between and around them)."""
    images = list(images)
    if not images:
        raise ValueError("grid: no images")
    structs, keep = [], []
    for img in images:
        st, buf = _image_struct(img)
        structs.append(st)
        keep.append(buf)
    arr = (_api.ImageStruct * len(structs))(*structs)
    out = ctypes.POINTER(_api.ImageStruct)()
    check(_lib.load().svdiff_image_grid(arr, len(structs), int(cols), int(pad), ctypes.byref(out)))
    return _take_images(out, 1)[0]


class Images(list):
    """The images of one generate call (a list of (H, W, 3) uint8 arrays / svdiff.Image), with
    .seeds (each image's seed) and .parameters (each image's PNG 'parameters' text, as the CLI
    writes it). save(path) writes the files `svdiff generate -o path` writes."""

    def __init__(self, images, seeds, parameters):
        super().__init__(images)
        self.seeds, self.parameters = list(seeds), list(parameters)

    def save(self, path):
        """One image: path; several: path-1.png ... path-N.png and their grid as path, as the
        CLI names them. Returns the paths written (the grid last)."""
        if len(self) == 1:
            write_png(path, self[0], self.parameters[0])
            return [path]
        paths = [numbered_path(path, k + 1) for k in range(len(self))]
        for p, img, text in zip(paths, self, self.parameters):
            write_png(p, img, text)
        write_png(path, grid(self))
        return paths + [path]


class Model:
    """An opened model (a diffusers folder, a .safetensors file, or a .ckpt / .pt / .pth).

    Model(path, tokenizer=None, threads=None, compute_dtype=None, prediction_type=None,
          scheduler_config=None, svd_cache_dir=None, force=False, label=None)

    threads and compute_dtype ("fp32" / "bf16") are process-wide settings of the library, as in
    the CLI. label: the model's name in PNG texts (default: path as given, as `--model` in the CLI).
    Use it as a context manager or call close(); a closed model raises svdiff.Error."""

    def __init__(self, path, tokenizer=None, threads=None, compute_dtype=None, prediction_type=None,
                 scheduler_config=None, svd_cache_dir=None, force=False, label=None):
        lib = _lib.load()
        self._h = None
        if compute_dtype not in _api.COMPUTE:
            raise ValueError("compute_dtype must be 'fp32' or 'bf16', got %r" % (compute_dtype,))
        p = lib.svdiff_model_default_params()
        keep = [encode(tokenizer), encode(prediction_type), encode(scheduler_config), encode(svd_cache_dir)]
        p.tokenizer_dir, p.prediction_type, p.scheduler_config, p.svd_cache_dir = keep
        if threads is not None:
            p.threads = int(threads)
        p.compute = _api.COMPUTE[compute_dtype]
        p.force = 1 if force else 0
        h = ctypes.c_void_p()
        check(lib.svdiff_model_open(encode(path), ctypes.byref(p), ctypes.byref(h)))
        self._h = h
        self.path = os.fspath(path)
        self.label = label if label is not None else self.path

    # ---- lifetime ----
    def close(self):
        if self._h is not None:
            _lib.load().svdiff_model_close(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def handle(self):
        if self._h is None:
            raise Error(_api.ERR_ARG, "svdiff.Model: the model is closed")
        return self._h

    # ---- facts ----
    def info(self):
        """The model's facts as a dict (family, prediction_type, weights_hash, native_width, ...)."""
        info = _api.ModelInfo()
        check(_lib.load().svdiff_model_info(self.handle, ctypes.byref(info)))
        out = {}
        for name, _ in _api.ModelInfo._fields_:
            v = getattr(info, name)
            out[name] = v.decode() if isinstance(v, bytes) else v
        out["has_vae"] = bool(out["has_vae"])
        return out

    def latent_shape(self, width=None, height=None):
        """(channels, h, w) of the latents of an image of width x height (None: native size)."""
        info = self.info() if width is None or height is None else None
        w = width or info["native_width"]
        h = height or info["native_height"]
        c, lh, lw = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        check(_lib.load().svdiff_model_latent_shape(self.handle, w, h, ctypes.byref(c), ctypes.byref(lh), ctypes.byref(lw)))
        return c.value, lh.value, lw.value

    # ---- adapters ----
    def apply_shifts(self, shifts, scale=1.0):
        """Adds spectral shifts at a scale: a shift file, a training output folder, or an
        svdiff.Shifts. The weights are rebuilt from the base weights (no reload)."""
        from .shifts import Shifts
        lib = _lib.load()
        if isinstance(shifts, Shifts):
            check(lib.svdiff_model_apply_shift_set(self.handle, shifts.handle, float(scale)))
        else:
            check(lib.svdiff_model_apply_shifts(self.handle, encode(shifts), float(scale)))
        return self

    def apply_lora(self, path, scale=1.0):
        """Adds a LoRA file (diffusers or kohya names) or a folder with pytorch_lora_weights.safetensors."""
        check(_lib.load().svdiff_model_apply_lora(self.handle, encode(path), float(scale)))
        return self

    def apply_delta(self, path, scale=1.0):
        """Adds a weight delta of `svdiff train --mode full --save-delta` (file or folder)."""
        check(_lib.load().svdiff_model_apply_delta(self.handle, encode(path), float(scale)))
        return self

    def clear_adapters(self):
        """Removes every adapter: the base weights again, bit for bit."""
        check(_lib.load().svdiff_model_clear_adapters(self.handle))
        return self

    @property
    def adapters(self):
        """The adapters as the PNG text lists them ("a.safetensors (1), lora x (0.5)"; "" with none)."""
        s = _lib.load().svdiff_model_adapters_text(self.handle)
        return (s or b"").decode("utf-8", "replace")

    # ---- generation ----
    def _generate_params(self, prompt, negative_prompt, width, height, steps, cfg, eta, sampler, seed,
                         num_images, batch_size, conditioning=None):
        lib = _lib.load()
        p = lib.svdiff_generate_model_params(self.handle)   # the model's defaults (SDXL: euler, cfg 5)
        if prompt is None:
            raise ValueError("generate: a prompt is required")
        keep = (encode(prompt), encode(negative_prompt))
        p.prompt, p.negative_prompt = keep
        p.width, p.height = int(width or 0), int(height or 0)
        if steps is not None:
            p.steps = int(steps)
        if cfg is not None:
            p.cfg = float(cfg)
        if eta is not None:
            p.eta = float(eta)
        if sampler is not None:
            p.sampler = _sampler(sampler)
        if seed is not None:
            p.seed = int(seed)
        p.num_images, p.batch = int(num_images), int(batch_size)
        for name, value in (conditioning or {}).items():
            if name == "clip_skip":
                p.clip_skip = int(value or 0)
            elif name in _api.MICRO_CONDITIONING:
                pair = (0, 0) if value is None else tuple(int(v) for v in value)
                if len(pair) != 2:
                    raise ValueError("%s: a pair (a, b), got %r" % (name, value))
                getattr(p, name)[:] = pair
            else:
                raise TypeError("unknown generation setting %r" % name)
        return p, keep

    def png_parameters(self, prompt, seed=None, negative_prompt=None, width=None, height=None, steps=None,
                       cfg=None, eta=None, sampler=None, label=None, **conditioning):
        """The PNG 'parameters' text `svdiff generate --model LABEL` writes for these settings
        (LABEL: the model's label) and the model's current adapters. conditioning: as generate's."""
        p, keep = self._generate_params(prompt, negative_prompt, width, height, steps, cfg, eta, sampler, seed, 1, 1,
                                        conditioning)
        text = take_string(_lib.load().svdiff_png_parameters(self.handle, ctypes.byref(p), p.seed,
                                                              encode(label if label is not None else self.label)))
        if text is None:
            raise make(_api.ERR_ARG)
        return text

    def generate(self, prompt, negative_prompt=None, width=None, height=None, steps=None, cfg=None, eta=None,
                 sampler=None, seed=None, num_images=1, batch_size=1, init_latents=None, progress=None,
                 cancel=None, on_image=None, output=None, **conditioning):
        """Text to image: the images `svdiff generate` makes with the same settings and threads.

        Defaults are the model's (svdiff_generate_model_params: steps 20, cfg 7.5, eta 0, sampler
        "ddim", seed 42; SDXL: cfg 5 and its scheduler's sampler, euler for SDXL base; size: the
        model's native size); image k has seed + k. conditioning: clip_skip (int) and SDXL's
        micro-conditioning as (a, b) pairs in pixels, as `svdiff generate`'s flags: original_size and
        target_size (height, width), crops_coords_top_left (top, left), and negative_original_size,
        negative_crops_coords_top_left, negative_target_size (default: the positive ones). progress(p) gets svdiff.Progress per denoising
        step; cancel() returning true stops (svdiff.Cancelled); on_image(image, index, seed) gets
        each image as soon as it is decoded. init_latents: the initial noise, num_images (or 1) x
        latent_shape() floats (a numpy array or a sequence). output: also write the PNGs as
        `svdiff generate -o output` does (without its grid). Returns svdiff.Images."""
        lib = _lib.load()
        p, keep = self._generate_params(prompt, negative_prompt, width, height, steps, cfg, eta, sampler, seed,
                                        num_images, batch_size, conditioning)
        lat = None
        if init_latents is not None:
            c, lh, lw = self.latent_shape(p.width or None, p.height or None)
            per = c * lh * lw
            lat = _floats(init_latents)
            if len(lat) not in (per, per * p.num_images):
                raise ValueError("init_latents: %d floats, want %d (1 x %d x %d x %d) or %d" %
                                 (len(lat), per, c, lh, lw, per * p.num_images))
            p.init_latents, p.n_init_latents = lat, len(lat) // per
        hooks = Hooks(progress, cancel, on_image)
        p.callbacks = hooks.struct
        out = ctypes.POINTER(_api.ImageStruct)()
        with hooks:
            rc = lib.svdiff_generate(self.handle, ctypes.byref(p), ctypes.byref(out))
        hooks.reraise()
        check(rc)
        seeds = [out[k].seed for k in range(p.num_images)]
        images = _take_images(out, p.num_images)
        texts = []
        for s in seeds:
            texts.append(take_string(lib.svdiff_png_parameters(self.handle, ctypes.byref(p), s, encode(self.label))))
        result = Images(images, seeds, texts)
        del keep
        if output is not None:
            result.save(output)
        return result

    def save_png(self, path, image, prompt, seed=None, **settings):
        """Writes image as `svdiff generate` would for these settings (the same bytes for the
        image it made): write_png with png_parameters(prompt, seed, **settings)."""
        return write_png(path, image, self.png_parameters(prompt, seed=seed, **settings))

    # ---- editing ----
    def edit(self, image, prompt, edits, resolution=None, steps=None, cfg=None, eta=None, slerp=None,
             invert_source=False, no_inversion=False, seed=None, progress=None, cancel=None, report=False):
        """CoSINE single-image editing as `svdiff edit` does it on this model: image (a path, an
        array or an svdiff.Image) DDIM-inverted with prompt, then sampled with each of edits.
        Defaults: steps 50, cfg 3, eta 0.1, seed 42, the model's native resolution. Returns
        svdiff.EditResult(edits, reconstruction, input, psnr): the edited images, the prompt
        sampled back from the inversion, the input as edited (resized, centre-cropped) and the
        reconstruction's PSNR in dB. report=True adds what `svdiff edit --report` prints (one more
        sampling run and the VAE round trip) as .report: reconstruction_psnr, vae_roundtrip_psnr (inf
        without a VAE), reconstruction_vs_vae_psnr, noise_reconstruction_psnr (dB)."""
        lib = _lib.load()
        edits = [edits] if isinstance(edits, str) else list(edits)
        p = lib.svdiff_edit_default_params()
        keep = [encode(prompt)] + [encode(e) for e in edits]
        arr = (ctypes.c_char_p * len(edits))(*keep[1:])
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            keep.append(encode(image))
            p.image_path = keep[-1]
        else:
            img, buf = _image_struct(image)
            keep += [img, buf]
            p.image = ctypes.pointer(img)
        p.prompt, p.edits, p.n_edits = keep[0], arr, len(edits)
        for name, v in (("resolution", resolution), ("steps", steps), ("cfg", cfg), ("eta", eta), ("slerp", slerp),
                        ("seed", seed)):
            if v is not None:
                setattr(p, name, v)
        p.invert_source, p.no_inversion = int(bool(invert_source)), int(bool(no_inversion))
        hooks = Hooks(progress, cancel)
        p.callbacks = hooks.struct
        out = ctypes.POINTER(_api.ImageStruct)()
        psnr = ctypes.c_double()
        rep = _api.EditReport()
        with hooks:
            rc = lib.svdiff_edit(self.handle, ctypes.byref(p), ctypes.byref(out), ctypes.byref(psnr))
            if not rc and report and hooks.error is None:   # on the images svdiff_edit returned
                rc = lib.svdiff_edit_report(self.handle, ctypes.byref(p), out, ctypes.byref(rep))
        images = _take_images(out, len(edits) + 2) if out else None
        hooks.reraise()
        check(rc)
        figures = None
        if report:
            figures = {"reconstruction_psnr": psnr.value, "vae_roundtrip_psnr": rep.vae_roundtrip_psnr,
                       "reconstruction_vs_vae_psnr": rep.reconstruction_vs_vae_psnr,
                       "noise_reconstruction_psnr": rep.noise_reconstruction_psnr}
        return EditResult(images[2:], images[1], images[0], psnr.value, figures)


EditResult = collections.namedtuple("EditResult", "edits reconstruction input psnr report", defaults=(None,))


def _floats(values):
    """A ctypes float array of values (numpy array, array.array, or any sequence of numbers)."""
    if hasattr(values, "astype") and hasattr(values, "ravel"):
        data = values.astype("float32").ravel().tobytes()
        return (ctypes.c_float * (len(data) // 4)).from_buffer_copy(data)
    values = list(values)
    return (ctypes.c_float * len(values))(*values)


def _image_struct(image):
    """An svdiff_image_t over a copy of an image's RGB8 bytes; (struct, buffer to keep alive)."""
    data, w, h = _image.to_rgb(image)
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    s = _api.ImageStruct()
    s.rgb = ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8))
    s.width, s.height = w, h
    return s, buf
