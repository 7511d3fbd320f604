"""svdiff.Shifts: spectral shifts in memory (a UNet part and a text-encoder part) and the toolbox
of `svdiff shifts`: combine, scale, limit_rank, mix; load and save shift files."""
import ctypes

from . import _api, _image, _lib
from ._errors import Error, check, encode


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

    @classmethod
    def load(cls, path, force=False):
        """A shift file, or a training output folder (its two files must have been written
        together unless force)."""
        h = ctypes.c_void_p()
        check(_lib.load().svdiff_shifts_load_ex(encode(path), 1 if force else 0, ctypes.byref(h)))
        return cls(h)

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
