"""svdiff.Shifts: spectral shifts in memory (a UNet part and a text-encoder part) and the toolbox
of `svdiff shifts`: combine, scale, limit_rank, mix; load and save shift files."""
import ctypes
import json
import os

from . import _api, _errors, _image, _lib
from ._errors import Error, check, encode, take_string


class Shifts:
    """A shift set. Shifts.load(path) reads a shift file or a training output folder; the toolbox
    methods return new sets; save(path) writes them as `svdiff train` / `svdiff shifts` do.
    len(s), s.names(), s[name] / s[i] (the values: a float32 numpy array, or a list without
    numpy), iteration over (name, values), s.meta(key). Free with close() or a with block."""

    def __init__(self, handle):
        if not handle:
            raise Error(_api.ERR_ARG, "svdiff.Shifts: no shift set (use Shifts.load)")
        self._h = handle
        self.kept_values = None   # limit_rank: the values a truncated layout stores
        self.n_from = None        # mix: the entries taken from `from_`
        self.path = None          # load: the file or folder it was read from
        self.convert_stats = None   # convert: what the scalar fit of the norm shifts lost

    @classmethod
    def load(cls, path, force=False):
        """A shift file, or a training output folder (its two files must have been written
        together unless force)."""
        h = ctypes.c_void_p()
        check(_lib.load().svdiff_shifts_load_ex(encode(path), 1 if force else 0, ctypes.byref(h)))
        r = cls(h)
        r.path, r._force = os.fspath(path), bool(force)
        return r

    def save(self, path, fp16=None):
        """Saves in the form the set was loaded from (a folder's set: the folder path with both
        files as one pair; a file's: the file path), atomically. fp16: True float16, False
        float32, None the dtype each part was loaded with (what `svdiff shifts` writes)."""
        check(_lib.load().svdiff_shifts_save(self.handle, encode(path), -1 if fp16 is None else 1 if fp16 else 0))
        return path

    # ---- lifetime ----
    @property
    def handle(self):
        if self._h is None:
            raise Error(_api.ERR_ARG, "svdiff.Shifts: the shift set is closed")
        return self._h

    def close(self):
        if getattr(self, "_h", None) is not None:
            _lib.load().svdiff_shifts_free(self._h)
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

    # ---- contents ----
    def __len__(self):
        n = _lib.load().svdiff_shifts_count(self.handle)
        if n < 0:
            check(n)
        return n

    def entry(self, i):
        """(name, values) of entry i (UNet entries first, then "text_model..." ones)."""
        name, values, n = ctypes.c_char_p(), ctypes.POINTER(ctypes.c_float)(), ctypes.c_int()
        if i < 0:
            i += len(self)
        check(_lib.load().svdiff_shifts_entry(self.handle, i, ctypes.byref(name), ctypes.byref(values), ctypes.byref(n)))
        data = ctypes.string_at(values, n.value * 4)
        if _image.have_numpy():
            vals = _image._np.frombuffer(data, dtype=_image._np.float32).copy()
        else:
            vals = list((ctypes.c_float * n.value).from_buffer_copy(data))
        return name.value.decode(), vals

    def names(self):
        return [self.entry(i)[0] for i in range(len(self))]

    def __iter__(self):
        for i in range(len(self)):
            yield self.entry(i)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.entry(key)[1]
        for name, vals in self:
            if name == key:
                return vals
        raise KeyError(key)

    def meta(self, key):
        """A metadata value (base_model_hash, ...) of the UNet part, else of the text-encoder part; None if absent."""
        v = _lib.load().svdiff_shifts_meta(self.handle, encode(key))
        return None if v is None else v.decode("utf-8", "replace")

    def set_meta(self, key, value):
        """Sets a metadata key of every part."""
        check(_lib.load().svdiff_shifts_set_meta(self.handle, encode(key), encode(value)))
        return self

    def add_history(self, entry):
        """Appends an entry to the "history" metadata (`svdiff shifts scale 0.5` adds "scale 0.5");
        the toolbox methods record none themselves."""
        check(_lib.load().svdiff_shifts_add_history(self.handle, encode(entry)))
        return self

    # ---- per-part view, description ----
    def parts(self):
        """The parts present (0 the UNet's, 1 the text encoder's, 2 SDXL's text_encoder_2's), as dicts: part, folder, file (None
        for a toolbox result), entries, values, matrices, norms, dtype ("F16" / "F32"), dtype_bytes,
        kept (limit_rank's values kept, else None), taken (mix's entries from `from_`, else None),
        metadata (dict in file order)."""
        lib, out = _lib.load(), []
        for part in (0, 1, 2):
            i = _api.ShiftsPart()
            check(lib.svdiff_shifts_part(self.handle, part, ctypes.byref(i)))
            if not i.present:
                continue
            meta = {}
            for k in range(i.n_meta):
                key, value = ctypes.c_char_p(), ctypes.c_char_p()
                check(lib.svdiff_shifts_meta_at(self.handle, part, k, ctypes.byref(key), ctypes.byref(value)))
                meta[key.value.decode("utf-8", "replace")] = value.value.decode("utf-8", "replace")
            out.append({"part": part, "folder": bool(i.folder), "file": None if i.file is None else i.file.decode(),
                        "entries": i.entries, "values": i.values, "matrices": i.matrices, "norms": i.norms,
                        "dtype": i.dtype.decode(), "dtype_bytes": i.dtype_bytes,
                        "kept": None if i.kept < 0 else i.kept, "taken": None if i.taken < 0 else i.taken,
                        "metadata": meta})
        return out

    def describe(self, svd_cache=None, model=None, top=10, force=None):
        """What `svdiff shifts info --json` prints, as a dict ({"files": [...]}). Called on a set
        read by Shifts.load (its file or folder), or as Shifts.describe(path). svd_cache (an SVD
        cache file or folder) or model (whose weights hash names the cache file) give singular
        values: "largest_relative_shifts" instead of "largest_shifts"; top: how many."""
        if isinstance(self, Shifts):
            path = self.path
            if path is None:
                raise Error(_api.ERR_ARG, "Shifts.describe: this set was not loaded from a file (save it, then describe the file)")
            if force is None:
                force = self._force
        else:
            path = os.fspath(self)
        txt = ctypes.c_void_p()
        check(_lib.load().svdiff_shifts_describe(encode(path), 1 if force else 0, encode(svd_cache), encode(model),
                                                 int(top), ctypes.byref(txt)))
        return json.loads(take_string(txt))

    # ---- convert, export ----
    def convert(self, dtype="fp32", format=None, model=None, force=False, fit=None):
        """`svdiff shifts convert`: a new set stored as dtype ("fp32", "fp16", or None: each part's
        own), format None (values only), "native" (per-element norm shifts) or "svdiff-pytorch"
        (scalar norm shifts, a least-squares fit; needs model, the base model). A fit losing more
        than 1e-4 of the norm shifts raises svdiff.Error unless force. fit(part, path, lost,
        max_gain_err) is called per fitted norm (path None: part's fit begins). The new set's
        .convert_stats: dict lossy, lost, n_fitted, worst_lost, worst_path (also on the error,
        as its .convert_stats). `svdiff shifts convert` also records add_history("convert to DTYPE")."""
        lib = _lib.load()
        p = lib.svdiff_convert_default_params()
        fp16 = {None: -1, "fp32": 0, "f32": 0, "fp16": 1, "f16": 1}
        if dtype not in fp16:
            raise ValueError("Shifts.convert: dtype must be fp32, fp16 or None, got %r" % (dtype,))
        keep = [encode(format), encode(model)]
        p.fp16, p.format, p.model, p.force = fp16[dtype], keep[0], keep[1], 1 if force else 0
        raised = []
        if fit is not None:
            def call(part, path, lost, err, _ud):
                if raised:
                    return
                try:
                    fit(part, None if path is None else path.decode("utf-8", "replace"), lost, err)
                except BaseException as e:   # noqa: B902 (raised again after the call)
                    raised.append(e)
            cb = _api.FIT_FN(call)
            keep.append(cb)
            p.fit = cb
        out, st = ctypes.c_void_p(), _api.ConvertStats()
        rc = lib.svdiff_shifts_convert(self.handle, ctypes.byref(p), ctypes.byref(out), ctypes.byref(st))
        stats = {"lossy": bool(st.lossy), "lost": st.lost, "n_fitted": st.n_fitted, "worst_lost": st.worst_lost,
                 "worst_path": st.worst_path.decode("utf-8", "replace")}
        if rc and out:
            lib.svdiff_shifts_free(out)
        if raised:
            if not rc and out:
                lib.svdiff_shifts_free(out)
            raise raised[0]
        try:
            check(rc)
        except Error as e:
            e.convert_stats = stats
            raise
        r = Shifts(out)
        r.convert_stats = stats
        return r

    def to_lora(self, model, output, format="kohya", rank=None, energy=None, dtype="fp16", no_norms=False,
                no_embeddings=False, force=False, check=False, svd_cache_dir=None):
        """`svdiff shifts to-lora`: writes the set as one LoRA file `output` for the base model at
        `model`. format "kohya" or "diffusers"; rank: at most this per layer; energy: per layer the
        smallest rank keeping this share of ||dW||^2 (default 0.99, or 1 with rank alone, as the
        CLI); dtype of the factors "fp16", "fp32" or "bf16"; svd_cache_dir None the default folder,
        "" none. check: measure the written factors (err2 / ref2). Returns the stats of the
        two components (UNet, text encoder) as dicts; the file records the set's load path."""
        lib = _lib.load()
        p = lib.svdiff_lora_default_params()
        if format not in _api.LORA_FORMATS:
            raise ValueError("Shifts.to_lora: format must be kohya or diffusers, got %r" % (format,))
        if str(dtype).lower() not in _api.DTYPES:
            raise ValueError("Shifts.to_lora: dtype must be fp32, fp16 or bf16, got %r" % (dtype,))
        p.format, p.dtype = _api.LORA_FORMATS[format], _api.DTYPES[str(dtype).lower()]
        p.max_rank = 0 if rank is None else int(rank)
        p.energy = float(energy) if energy is not None else 1.0 if rank is not None else 0.99
        p.no_norms, p.no_embeddings = 1 if no_norms else 0, 1 if no_embeddings else 0
        p.force, p.check = 1 if force else 0, 1 if check else 0
        cache = encode(svd_cache_dir)
        p.svd_cache_dir = cache
        st = (_api.LoraStats * 2)()
        _errors.check(lib.svdiff_shifts_to_lora(self.handle, encode(os.fspath(model)), ctypes.byref(p), encode(output), st))
        return [{k: getattr(st[c], k) for k, _ in _api.LoraStats._fields_} for c in (0, 1)]

    def __repr__(self):
        return "<svdiff.Shifts %s>" % ("closed" if self._h is None else "%d entries" % len(self))

    # ---- toolbox ----
    @staticmethod
    def combine(sets, weights=None, ignore_hash=False):
        """Task arithmetic: sum_k weights[k] * sets[k] (weights None: all 1)."""
        sets = list(sets)
        if not sets:
            raise ValueError("Shifts.combine: no shift sets")
        handles = (ctypes.c_void_p * len(sets))(*[s.handle for s in sets])
        w = None
        if weights is not None:
            weights = [float(x) for x in weights]
            if len(weights) != len(sets):
                raise ValueError("Shifts.combine: %d weights for %d sets" % (len(weights), len(sets)))
            w = (ctypes.c_float * len(weights))(*weights)
        out = ctypes.c_void_p()
        check(_lib.load().svdiff_shifts_combine(handles, w, len(sets), 1 if ignore_hash else 0, ctypes.byref(out)))
        return Shifts(out)

    def scale(self, s):
        """s * self, a new set."""
        out = ctypes.c_void_p()
        check(_lib.load().svdiff_shifts_scale(self.handle, float(s), ctypes.byref(out)))
        return Shifts(out)

    def limit_rank(self, rank):
        """Keeps the shifts of the top-rank singular values of every matrix; the new set's
        .kept_values is the number of values a truncated layout stores."""
        out, kept = ctypes.c_void_p(), ctypes.c_long()
        check(_lib.load().svdiff_shifts_limit_rank(self.handle, int(rank), ctypes.byref(out), ctypes.byref(kept)))
        r = Shifts(out)
        r.kept_values = kept.value
        return r

    @staticmethod
    def mix(from_, rest, selectors, levels=4, latent=64, ignore_hash=False):
        """Entries of from_ selected by selectors ("geometry", "res:HxW", module-path globs; see
        `svdiff shifts mix --help`), the rest from rest. levels / latent describe the model (4
        and 64 for SD 1.x at 512 px). The new set's .n_from counts the entries taken from from_."""
        selectors = [selectors] if isinstance(selectors, str) else list(selectors)
        sel = (ctypes.c_char_p * len(selectors))(*[encode(s) for s in selectors])
        out, n_from = ctypes.c_void_p(), ctypes.c_int()
        check(_lib.load().svdiff_shifts_mix(from_.handle, rest.handle, sel, len(selectors), int(levels), int(latent),
                                            1 if ignore_hash else 0, ctypes.byref(out), ctypes.byref(n_from)))
        r = Shifts(out)
        r.n_from = n_from.value
        return r

    def __add__(self, other):
        return Shifts.combine([self, other])

    def __mul__(self, s):
        return self.scale(s)

    __rmul__ = __mul__
