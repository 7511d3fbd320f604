"""Images across the API are RGB8 buffers (height x width x 3 bytes, rows top to bottom). In Python
they are numpy uint8 arrays of shape (H, W, 3) when numpy is importable, else Image objects; both
go to PIL with PIL.Image.fromarray(a) / PIL.Image.frombytes("RGB", (img.width, img.height),
img.tobytes()). SVDIFF_NO_NUMPY=1 in the environment makes the package act as without numpy."""
import ctypes
import os

try:
    if os.environ.get("SVDIFF_NO_NUMPY", "") not in ("", "0"):
        raise ImportError("SVDIFF_NO_NUMPY is set")
    import numpy as _np
except ImportError:
    _np = None


def have_numpy():
    return _np is not None


class Image:
    """An RGB8 image without numpy: .width, .height, .mode ("RGB"), .size ((width, height), as PIL),
    .tobytes() (the rows, 3 bytes a pixel) and .pixel(x, y). It has __array_interface__, so
    numpy.asarray(img) is the (H, W, 3) uint8 array where numpy exists."""

    mode = "RGB"

    def __init__(self, width, height, data):
        data = bytes(data)
        if width <= 0 or height <= 0 or len(data) != width * height * 3:
            raise ValueError("an RGB image of %dx%d needs %d bytes, got %d" % (width, height, width * height * 3, len(data)))
        self.width, self.height, self._data = width, height, data

    @property
    def size(self):
        return (self.width, self.height)

    @property
    def shape(self):
        return (self.height, self.width, 3)

    def tobytes(self):
        return self._data

    def pixel(self, x, y):
        i = (y * self.width + x) * 3
        return tuple(self._data[i:i + 3])

    @property
    def __array_interface__(self):
        return {"shape": self.shape, "typestr": "|u1", "data": self._data, "version": 3}

    def __eq__(self, other):
        return isinstance(other, Image) and self.size == other.size and self._data == other._data

    def __repr__(self):
        return "<svdiff.Image RGB %dx%d>" % (self.width, self.height)


def from_buffer(address, width, height):
    """A copy of the RGB8 buffer at `address` (width * height * 3 bytes) as an array or Image."""
    data = ctypes.string_at(address, width * height * 3)
    if _np is not None:
        return _np.frombuffer(data, dtype=_np.uint8).reshape(height, width, 3).copy()
    return Image(width, height, data)


def to_rgb(image):
    """(bytes, width, height) of an image given as a numpy (H, W, 3) uint8 array, an Image, a PIL
    image (converted to RGB) or anything with .width / .height / .tobytes() in RGB8."""
    if isinstance(image, Image):
        return image.tobytes(), image.width, image.height
    if hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "size"):   # PIL
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image.tobytes(), image.size[0], image.size[1]
    if hasattr(image, "__array_interface__") and hasattr(image, "shape") and hasattr(image, "dtype"):
        shape = tuple(image.shape)
        if len(shape) != 3 or shape[2] != 3 or str(image.dtype) != "uint8":
            raise ValueError("an image array must be (height, width, 3) uint8, got %s %s" % (shape, image.dtype))
        return image.tobytes(), shape[1], shape[0]   # numpy: C order whatever the strides
    if hasattr(image, "width") and hasattr(image, "height") and hasattr(image, "tobytes"):
        return Image(image.width, image.height, image.tobytes()).tobytes(), image.width, image.height
    raise TypeError("not an image: %r (give a (H, W, 3) uint8 array, an svdiff.Image or a PIL image)" % (image,))
