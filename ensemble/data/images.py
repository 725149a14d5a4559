"""Image files for ``data.name: imagefolder``: decoded without crashing on a damaged file, and checked at load time.

Decoding: torchvision's PNG decoder hands a damaged PNG to libpng, which prints ``libpng error: ...`` on stderr and
then takes the whole process down (a segmentation fault with torchvision 0.29), so no error can be reported. PNG
files are therefore read by Pillow, which raises a Python error instead; the pixels are Pillow's where its array is
exactly torchvision's (8-bit grey, grey+alpha, RGB, RGBA, palette indices), and otherwise torchvision decodes the
file once Pillow has read it whole. JPEG, GIF and WEBP go through torchvision as before.

Checking (:func:`check_images`): every model has one input shape, so before anything trains each file's header is
read (its size and mode, not its pixels) and one file of each distinct header is decoded; a file that cannot be
identified, or that decodes to another shape or dtype than the first training image, is named in one line.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble.base.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> the Pillow mode whose array, at bit depth 8, equals torchvision's decoded image.
PILLOW_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


def decode(path: str) -> torch.Tensor:
    """An image file as a (C, H, W) tensor, uint8 (uint16 for a 16-bit PNG), as torchvision decodes it unchanged."""
    with open(path, "rb") as file:
        head = file.read(26)  # the signature and the IHDR chunk up to bit depth and colour type
    if head[:8] != PNG_SIGNATURE:
        return _torchvision(path)
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # reads and inflates every chunk: a damaged file raises here, before libpng ever sees it
        if len(head) == 26 and head[24] == 8 and PILLOW_MODES.get(head[25]) == image.mode:
            array = np.array(image)  # a copy: Pillow's own buffer is read-only
            return torch.from_numpy(array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1)))
    with Image.open(path) as image:
        image.verify()  # chunk checksums too, which load() skips and libpng does not
    return _torchvision(path)


def _torchvision(path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(path, mode=ImageReadMode.UNCHANGED)


def header(path: str) -> tuple:
    """What the file says it holds, read from its header only: (width, height), mode and raw layout."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            tile = image.tile[0][3] if image.tile else ""
            return image.size, image.mode, str(tile)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a file it cannot read: name the file
        raise DataError(f"data.root: {path}: cannot be read as an image ({_detail(err)})") from None


def decoded(path: str) -> torch.Tensor:
    try:
        return decode(path)
    except Exception as err:  # noqa: BLE001 - a damaged file: name it
        raise DataError(f"data.root: {path}: cannot be read as an image ({_detail(err)})") from None


def _detail(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def _describe(size: tuple[int, int], mode: str, image: torch.Tensor) -> str:
    return f"{size[0]}x{size[1]} {mode}, shape {tuple(image.shape)} {str(image.dtype).removeprefix('torch.')}"


def check_images(first: str, paths: list[str]) -> tuple[int, ...]:
    """Every file in ``paths`` identifiable and decoding to the same shape and dtype as ``first``: each header is
    read, and one file per distinct header decoded. Returns that shape."""
    groups: dict[tuple, str] = {}
    for path in paths:
        groups.setdefault(header(path), path)
    size, mode, _ = header(first)
    expected = decoded(first)
    if expected.dtype != torch.uint8:
        raise DataError(f"data.root: {first} is {_describe(size, mode, expected)}; the imagefolder dataset reads "
                        "8-bit images (uint8, scaled to [0, 1]): convert them to 8 bits per channel")
    for (other_size, other_mode, _), path in groups.items():
        image = expected if path == first else decoded(path)
        if image.shape != expected.shape or image.dtype != expected.dtype:
            raise DataError(
                f"data.root: {path} is {_describe(other_size, other_mode, image)}, but every image must match the "
                f"first training image {first} ({_describe(size, mode, expected)}); resize or convert it"
            )
    return tuple(expected.shape)
