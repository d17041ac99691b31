#!/usr/bin/python3
"""Independent reference for loupe's image decoding and CLIP preprocessing.

Written from the semantics of LLaVA-1.5 / ShareGPT4V (`expand2square` + pad
colour `tuple(int(x*255) for x in image_mean)`) and of Hugging Face's numpy
`CLIPImageProcessor` (transformers.image_transforms: resize with PIL BICUBIC to
`get_resize_output_image_size(size=shortest_edge, default_to_square=False)`,
`center_crop` with zero padding, `rescale` (uint8 -> float64 * factor ->
float32), `normalize` ((x - mean) / std in float32), channels first), using only
Pillow and numpy (Debian /usr/bin/python3). transformers itself is not needed.

Importable API (kept stable; the vision-model reference imports it):

    preprocess(path_or_image, pad=True, size=336, crop=336,
               mean=CLIP_MEAN, std=CLIP_STD, rescale_factor=1/255, resize=True) -> np.ndarray
        float32 [3, crop, crop] pixel values of one image, exactly as LLaVA's
        process_images(..., image_aspect_ratio='pad' if pad else None) gives them.
        `path_or_image` is a file path or an already-decoded PIL image.

    load_rgb(path) -> PIL.Image   # Image.open(path).convert('RGB'), as LLaVA loads

Note: HF infers the channel axis of a numpy image from its shape, and guesses
wrong for images whose height is 1 or 3 (shape (1|3, W, 3) looks channels-first).
This reference (and loupe) follows the intended semantics (HWC) instead.

CLI:
    preprocess_ref.py --image PATH [--no-pad] [--no-resize] [--size 336] [--crop 336] --out pixel_values.npy
                      [--decoded-out rgb.npy]    # also PIL's decoded RGB, float32 [H, W, 3]
    preprocess_ref.py --decoded-in rgb.npy ...    # preprocess these pixels instead of a file
    preprocess_ref.py --decode IMG OUT.npy [IMG OUT.npy ...]   # PIL decode only, float32 [H, W, 3]
    preprocess_ref.py --resize-cases CASES.txt    # lines "in.npy out.npy W H": PIL bicubic resize
                                                  # of a [H, W, 3] array, written as float32
    preprocess_ref.py --make-variants DIR         # write synthetic image files for decoder tests
    preprocess_ref.py --batch ARGS.txt            # each line: one set of the arguments above
"""
import argparse
import io
import os
import shlex
import struct
import sys
import zlib

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_rgb(path):
    with open(path, "rb") as f:
        im = Image.open(io.BytesIO(f.read()))
        return im.convert("RGB")


def pad_color(mean):
    return tuple(int(x * 255) for x in mean)


def expand2square(pil_img, background_color):
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def resize_output_size(height, width, shortest_edge):
    """HF get_resize_output_image_size(default_to_square=False) -> (height, width)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop(arr, crop_h, crop_w):
    """HF image_transforms.center_crop on an HWC array, zero-padding small images."""
    h, w = arr.shape[:2]
    top = (h - crop_h) // 2
    left = (w - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= h and left + crop_w <= w:
        return arr[top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((new_h, new_w) + arr.shape[2:], dtype=arr.dtype)
    top_pad = -(-(new_h - h) // 2)  # ceil
    left_pad = -(-(new_w - w) // 2)
    padded[top_pad:top_pad + h, left_pad:left_pad + w] = arr
    top += top_pad
    left += left_pad
    return padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def preprocess(path_or_image, pad=True, size=336, crop=336, mean=CLIP_MEAN, std=CLIP_STD,
               rescale_factor=1 / 255, resize=True):
    """float32 [3, crop, crop] CLIP pixel values of one image (LLaVA pad + CLIPImageProcessor)."""
    img = load_rgb(path_or_image) if isinstance(path_or_image, (str, os.PathLike)) else path_or_image.convert("RGB")
    if pad:
        img = expand2square(img, pad_color(mean))
    if resize:
        h, w = resize_output_size(img.height, img.width, size)
        img = img.resize((w, h), resample=Image.BICUBIC)
    arr = np.array(img)  # uint8 HWC
    arr = center_crop(arr, crop, crop)
    arr = (arr.astype(np.float64) * rescale_factor).astype(np.float32)
    arr = (arr - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)


def save_f32(path, arr):
    np.save(path, np.ascontiguousarray(arr, dtype=np.float32))


def rgb_from_npy(path):
    a = np.load(path)
    return Image.fromarray(np.asarray(np.rint(a), dtype=np.uint8), "RGB")


# --- synthetic files for decoder tests ----------------------------------------

def _png_bytes(arr, color_type, bit_depth, palette=None, trns=None, interlace=False):
    """A minimal PNG writer (PIL cannot write 16-bit RGB / RGBA / LA, nor interlace)."""
    h, w = arr.shape[:2]

    def scanlines(a):  # filter type 0 (None) on every row
        raw = a.astype(">u2" if bit_depth == 16 else np.uint8).tobytes()
        row = len(raw) // a.shape[0]
        return b"".join(b"\x00" + raw[y * row:(y + 1) * row] for y in range(a.shape[0]))

    if interlace:  # Adam7: seven sub-images, empty ones omitted
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        data = b"".join(scanlines(arr[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
                        if arr[y0::dy, x0::dx].size)
    else:
        data = scanlines(arr)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, int(interlace)))
    if palette is not None:
        out += chunk(b"PLTE", bytes(palette))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")


def make_variants(d):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(1234)
    w, h = 37, 23
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)

    Image.fromarray(rgb, "RGB").save(os.path.join(d, "rgb.png"))
    Image.fromarray(rgba, "RGBA").save(os.path.join(d, "rgba.png"))
    Image.fromarray(grey, "L").save(os.path.join(d, "grey.png"))
    Image.fromarray(np.stack([grey, rgba[..., 3]], -1), "LA").save(os.path.join(d, "la.png"))
    g16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    g16[0, :8] = [0, 1, 128, 254, 255, 256, 1000, 65535]  # around the clip point
    Image.fromarray(g16, "I;16").save(os.path.join(d, "grey16.png"))
    Image.fromarray(grey > 127).save(os.path.join(d, "bilevel.png"))  # mode "1"
    pal = Image.fromarray(rgb, "RGB").convert("P", palette=Image.ADAPTIVE, colors=200)
    pal.save(os.path.join(d, "palette.png"))
    pal.save(os.path.join(d, "palette_trns.png"), transparency=3)
    pal4 = Image.fromarray(rgb, "RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
    pal4.save(os.path.join(d, "palette4bit.png"), bits=4)
    # Hand-written PNGs for what PIL cannot save.
    with open(os.path.join(d, "rgb16.png"), "wb") as f:
        f.write(_png_bytes(rng.integers(0, 65536, (h, w, 3), dtype=np.uint16), 2, 16))
    with open(os.path.join(d, "rgba16.png"), "wb") as f:
        f.write(_png_bytes(rng.integers(0, 65536, (h, w, 4), dtype=np.uint16), 6, 16))
    with open(os.path.join(d, "la16.png"), "wb") as f:
        f.write(_png_bytes(rng.integers(0, 65536, (h, w, 2), dtype=np.uint16), 4, 16))
    with open(os.path.join(d, "grey_trns.png"), "wb") as f:
        f.write(_png_bytes(grey, 0, 8, trns=b"\x00\x07"))
    with open(os.path.join(d, "rgb_trns.png"), "wb") as f:
        f.write(_png_bytes(rgb, 2, 8, trns=struct.pack(">HHH", *[int(v) for v in rgb[0, 0]])))
    with open(os.path.join(d, "interlaced.png"), "wb") as f:
        f.write(_png_bytes(rgb, 2, 8, interlace=True))
    with open(os.path.join(d, "interlaced16.png"), "wb") as f:
        f.write(_png_bytes(rng.integers(0, 65536, (h, w, 4), dtype=np.uint16), 6, 16, interlace=True))
    # BMP: 24-bit, 32-bit (from RGBA), 8-bit palette, 1-bit.
    Image.fromarray(rgb, "RGB").save(os.path.join(d, "rgb.bmp"))
    Image.fromarray(rgba, "RGBA").save(os.path.join(d, "rgba.bmp"))
    pal.save(os.path.join(d, "palette.bmp"))
    Image.fromarray(grey > 127).save(os.path.join(d, "bilevel.bmp"))
    Image.fromarray(grey, "L").save(os.path.join(d, "grey.bmp"))
    # GIF: palette, transparency, interlaced (PIL interlaces >= 16 px by default), grey.
    pal.save(os.path.join(d, "palette.gif"))
    pal.save(os.path.join(d, "palette_noninterlaced.gif"), interlace=False)
    pal.save(os.path.join(d, "palette_trns.gif"), transparency=5)
    Image.fromarray(grey, "L").save(os.path.join(d, "grey.gif"))
    big = Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8), "RGB").convert("P", palette=Image.ADAPTIVE)
    big.save(os.path.join(d, "big.gif"))  # long LZW stream: table fills, clear codes
    # Animated: only the first frame counts.
    frames = [Image.fromarray(np.roll(rgb, k, axis=1), "RGB").convert("P", palette=Image.ADAPTIVE) for k in range(3)]
    frames[0].save(os.path.join(d, "animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    # First frame smaller than the logical screen, with a transparency index:
    # patch a PIL-written GIF's screen size and image position.
    small = Image.fromarray(rgb[:9, :11], "RGB").convert("P", palette=Image.ADAPTIVE, colors=32)
    buf = io.BytesIO()
    small.save(buf, format="GIF", transparency=2, interlace=False)
    g = bytearray(buf.getvalue())
    struct.pack_into("<HH", g, 6, 20, 15)  # logical screen 20x15
    flags = g[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while g[pos] == 0x21:  # skip extensions
        pos += 2
        while g[pos]:
            pos += g[pos] + 1
        pos += 1
    assert g[pos] == 0x2C
    struct.pack_into("<HH", g, pos + 1, 4, 3)  # frame at (4, 3)
    with open(os.path.join(d, "subframe_trns.gif"), "wb") as f:
        f.write(g)
    # JPEG written by PIL (4:2:0 and 4:4:4, grey, progressive).
    Image.fromarray(rgb, "RGB").save(os.path.join(d, "q90.jpg"), quality=90)
    Image.fromarray(rgb, "RGB").save(os.path.join(d, "q95_444.jpg"), quality=95, subsampling=0)
    Image.fromarray(grey, "L").save(os.path.join(d, "grey.jpg"), quality=90)
    Image.fromarray(rgb, "RGB").save(os.path.join(d, "progressive.jpg"), quality=90, progressive=True)
    # EXIF orientation 6 ("rotate 90 CW to view"): convert('RGB') ignores it, so must we.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb, "RGB").save(os.path.join(d, "exif_rotated.jpg"), quality=90, exif=exif)
    Image.fromarray(rgb, "RGB").convert("CMYK").save(os.path.join(d, "cmyk.jpg"), quality=95)
    # Everything is listed with PIL's decoded RGB next to it.
    names = sorted(n for n in os.listdir(d) if not n.endswith(".npy"))
    with open(os.path.join(d, "list.txt"), "w") as f:
        for n in names:
            save_f32(os.path.join(d, n + ".npy"), np.array(load_rgb(os.path.join(d, n))))
            f.write(n + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image")
    ap.add_argument("--decoded-in", help="preprocess the float32 [H, W, 3] pixels in this .npy instead of --image")
    ap.add_argument("--no-pad", action="store_true")
    ap.add_argument("--no-resize", action="store_true")
    ap.add_argument("--size", type=int, default=336)
    ap.add_argument("--crop", type=int, default=None, help="crop size (default: --size)")
    ap.add_argument("--out")
    ap.add_argument("--decoded-out")
    ap.add_argument("--decode", nargs="+", metavar="IMG OUT")
    ap.add_argument("--resize-cases")
    ap.add_argument("--make-variants")
    ap.add_argument("--batch", help="run each line of this file as one set of arguments (one interpreter start)")
    a = ap.parse_args(argv)

    if a.batch:
        with open(a.batch) as f:
            for line in f:
                if line.strip():
                    main(shlex.split(line))

    if a.make_variants:
        make_variants(a.make_variants)
    if a.decode:
        if len(a.decode) % 2:
            ap.error("--decode takes IMG OUT pairs")
        for i in range(0, len(a.decode), 2):
            save_f32(a.decode[i + 1], np.array(load_rgb(a.decode[i])))
    if a.resize_cases:
        with open(a.resize_cases) as f:
            for line in f:
                if not line.strip():
                    continue
                src, dst, w, h = line.split()
                save_f32(dst, np.array(rgb_from_npy(src).resize((int(w), int(h)), resample=Image.BICUBIC)))
    if a.image or a.decoded_in:
        if not a.out:
            ap.error("--out is required with --image / --decoded-in")
        img = rgb_from_npy(a.decoded_in) if a.decoded_in else load_rgb(a.image)
        if a.decoded_out:
            save_f32(a.decoded_out, np.array(img))
        crop = a.crop if a.crop else a.size
        save_f32(a.out, preprocess(img, pad=not a.no_pad, size=a.size, crop=crop, resize=not a.no_resize))
    return 0


if __name__ == "__main__":
    sys.exit(main())
