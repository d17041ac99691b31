#!/usr/bin/python3
"""Seeded generator of synthetic shape scenes with English and Lithuanian captions.

A scene: 1 or 2 shapes (circle, square, triangle, star) in one of 8 colours, 2 sizes,
at one of 5 positions (left, right, top, bottom, centre; never two at one position)
on a plain background whose colour differs from every shape's. Images are
336x336 RGB, the tower's own input size, so a large shape spans ~7 patches and a
small one ~4 (a 3-layer, 64-wide ViT trained on 2 CPU cores tells shapes apart at
that scale, not at 2-3 patches), drawn with PIL; positions and colours are jittered
a little so no two renderings are pixel-identical.

Captions list the shapes in the fixed position order left, right, top, bottom,
centre, so the caption is a function of the image:
  en: "A large red circle on the left and a small blue square at the bottom, on a white background."
  lt: "Didelis raudonas apskritimas kairėje ir mažas mėlynas kvadratas apačioje, baltame fone."
Lithuanian agreement: apskritimas, kvadratas, trikampis are masculine, žvaigždė is
feminine; the size and colour adjectives agree in gender (nominative singular); the
background is masculine "fonas" in the locative ("...-ame fone").

Library:
  Scene, sample_scene(rng), render(scene) -> PIL.Image, caption_en(scene),
  caption_lt(scene), example(seed, index) -> dict (deterministic per (seed, index)),
  PROMPTS_EN, PROMPTS_LT
CLI:
  scenes.py --out DIR --seed S --count N     writes DIR/NNNN.png + DIR/captions.json
  scenes.py --check                           grammar/self checks + token-length stats
"""

import argparse
import json
import math
import os
import random
import sys
from collections import OrderedDict

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 336, 336

SHAPES = ["circle", "square", "triangle", "star"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SIZES = ["large", "small"]
POSITIONS = ["left", "right", "top", "bottom", "centre"]  # also the caption order

RGB = {
    "red": (215, 35, 35), "green": (35, 155, 55), "blue": (35, 70, 215),
    "yellow": (240, 215, 35), "purple": (135, 50, 175), "orange": (245, 135, 25),
    "black": (20, 20, 20), "white": (240, 240, 240),
}
CENTRES = {"left": (58, 168), "right": (278, 168), "top": (168, 58),
           "bottom": (168, 278), "centre": (168, 168)}
SIZE_PX = {"large": 96, "small": 52}  # nominal bounding-box side in pixels

# ---- English
EN_POS = {"left": "on the left", "right": "on the right", "top": "at the top",
          "bottom": "at the bottom", "centre": "in the centre"}

# ---- Lithuanian grammar
LT_NOUN = {"circle": ("apskritimas", "m"), "square": ("kvadratas", "m"),
           "triangle": ("trikampis", "m"), "star": ("žvaigždė", "f")}
LT_COLOUR = {  # nominative masculine, nominative feminine, locative masculine (fone)
    "red": ("raudonas", "raudona", "raudoname"),
    "green": ("žalias", "žalia", "žaliame"),
    "blue": ("mėlynas", "mėlyna", "mėlyname"),
    "yellow": ("geltonas", "geltona", "geltoname"),
    "purple": ("violetinis", "violetinė", "violetiniame"),
    "orange": ("oranžinis", "oranžinė", "oranžiniame"),
    "black": ("juodas", "juoda", "juodame"),
    "white": ("baltas", "balta", "baltame"),
}
LT_SIZE = {"large": ("didelis", "didelė"), "small": ("mažas", "maža")}
LT_POS = {"left": "kairėje", "right": "dešinėje", "top": "viršuje", "bottom": "apačioje",
          "centre": "centre"}

# Image-description prompts (the ones the adapter is trained and evaluated with).
PROMPTS_EN = [
    "Describe this image.",
    "What is in the picture?",
    "What do you see in this image?",
    "Describe the picture.",
    "What does this image show?",
    "Describe the image briefly.",
]
# Lithuanian prompts: the base model's only cue to answer in Lithuanian (base training).
PROMPTS_LT = [
    "Aprašyk šį paveikslėlį.",
    "Kas yra paveikslėlyje?",
    "Ką matai šiame paveikslėlyje?",
]

LT_LETTERS = set("ąčęėįšųūžĄČĘĖĮŠŲŪŽ")
LT_WORDS = set()
for _n, _g in LT_NOUN.values():
    LT_WORDS.add(_n)
for _t in LT_COLOUR.values():
    LT_WORDS.update(_t)
for _t in LT_SIZE.values():
    LT_WORDS.update(_t)
LT_WORDS.update(LT_POS.values())
LT_WORDS.update(["fone", "ir"])
LT_WORDS.discard("centre")  # also an English word


class Scene(object):
    """objects: list of (shape, colour, size, position) sorted in caption order;
    background: colour name; jitter: per-object (dx, dy, scale, rgb deltas), background
    rgb delta."""

    centres = None  # explicit object centres (tower-pretraining sheets only)

    def __init__(self, objects, background, jitter=None):
        self.objects = sorted(objects, key=lambda o: POSITIONS.index(o[3]))
        self.background = background
        self.jitter = jitter

    def to_dict(self):
        return OrderedDict([("objects", [OrderedDict(zip(("shape", "colour", "size", "position"), o))
                                         for o in self.objects]),
                            ("background", self.background)])


def sample_scene(rng):
    n = rng.choice((1, 2))
    positions = rng.sample(POSITIONS, n)
    objects = []
    for p in positions:
        objects.append((rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), p))
    used = set(o[1] for o in objects)
    background = rng.choice([c for c in COLOURS if c not in used])
    s = Scene(objects, background)
    s.jitter = _jitter(rng, len(s.objects))
    return s


def _jitter(rng, n):
    """Per object (dx, dy, scale, rgb delta, star tilt) and a background rgb delta."""
    return {"objects": [(rng.randint(-3, 3), rng.randint(-3, 3), rng.uniform(0.95, 1.05),
                         tuple(rng.randint(-10, 10) for _ in range(3)), rng.uniform(-0.1, 0.1))
                        for _ in range(n)],
            "background": tuple(rng.randint(-10, 10) for _ in range(3))}


def _clamp_rgb(rgb, delta):
    return tuple(max(0, min(255, c + d)) for c, d in zip(rgb, delta))


def _polygon(shape, cx, cy, side, rot):
    r = side / 2.0
    if shape == "triangle":  # equilateral, pointing up, fills the box width
        h = side * math.sqrt(3) / 2
        return [(cx, cy - h / 2 - 2), (cx - r, cy + h / 2 - 2), (cx + r, cy + h / 2 - 2)]
    if shape == "star":  # five points, one up (rot: small tilt in radians)
        pts = []
        for k in range(10):
            rr = r * 1.08 if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + rot * 0.6 + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    raise ValueError(shape)


def _draw(d, scene, S, fill_of):
    jit = scene.jitter or {"objects": [(0, 0, 1.0, (0, 0, 0), 0.0)] * len(scene.objects)}
    for k, ((shape, colour, size, pos), (dx, dy, sc, drgb, rot)) in enumerate(zip(scene.objects, jit["objects"])):
        cx, cy = scene.centres[k] if scene.centres else CENTRES[pos]
        cx, cy = (cx + dx) * S, (cy + dy) * S
        side = SIZE_PX[size] * sc * S
        fill = fill_of(k, colour, drgb)
        r = side / 2.0
        if shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            d.polygon(_polygon(shape, cx, cy, side, rot), fill=fill)


def render(scene, supersample=2):
    """PIL RGB image WIDTH x HEIGHT (drawn at 2x and downsampled: smooth edges)."""
    S = supersample
    bgj = scene.jitter["background"] if scene.jitter else (0, 0, 0)
    img = Image.new("RGB", (WIDTH * S, HEIGHT * S), _clamp_rgb(RGB[scene.background], bgj))
    _draw(ImageDraw.Draw(img), scene, S, lambda k, colour, drgb: _clamp_rgb(RGB[colour], drgb))
    if S != 1:
        img = img.resize((WIDTH, HEIGHT), resample=Image.LANCZOS)
    return img


def render_labels(scene):
    """uint8 [HEIGHT, WIDTH] region map with the geometry of render(): 0 = background,
    k + 1 = the k-th object of scene.objects (later objects drawn on top)."""
    img = Image.new("L", (WIDTH, HEIGHT), 0)
    _draw(ImageDraw.Draw(img), scene, 1, lambda k, colour, drgb: k + 1)
    return img


def sample_sheet(rng):
    """A 'contact sheet' for the tower pretraining only: up to 9 shapes on a jittered
    3x3 grid (no captions; dense per-patch supervision of colour/shape/size)."""
    cells = [(58 + 110 * i, 58 + 110 * j) for j in range(3) for i in range(3)]
    cells = [c for c in cells if rng.random() < 0.85]
    objects, centres = [], []
    for (cx, cy) in cells:
        objects.append((rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), None))
        centres.append((cx, cy))
    used = set(o[1] for o in objects)
    bgs = [c for c in COLOURS if c not in used] or COLOURS
    background = rng.choice(bgs)
    objects = [o for o in objects if o[1] != background] if len(bgs) == len(COLOURS) and used else objects
    s = Scene.__new__(Scene)
    keep = [(o, c) for o, c in zip(objects, centres) if o[1] != background]
    s.objects = [o for o, _ in keep]
    s.centres = [c for _, c in keep]
    s.background = background
    s.jitter = _jitter(rng, len(s.objects))
    return s


def caption_en(scene):
    parts = ["%s %s %s %s" % ("a", size, colour, shape) + " " + EN_POS[pos]
             for shape, colour, size, pos in scene.objects]
    bg = scene.background
    s = " and ".join(parts) + ", on %s %s background." % ("an" if bg[0] in "aeiou" else "a", bg)
    return s[0].upper() + s[1:]


def caption_lt(scene):
    parts = []
    for shape, colour, size, pos in scene.objects:
        noun, g = LT_NOUN[shape]
        i = 0 if g == "m" else 1
        parts.append("%s %s %s %s" % (LT_SIZE[size][i], LT_COLOUR[colour][i], noun, LT_POS[pos]))
    s = " ir ".join(parts) + ", %s fone." % LT_COLOUR[scene.background][2]
    return s[0].upper() + s[1:]


def rng_for(seed, index, salt=0):
    return random.Random((int(seed) * 1000003 + int(index)) * 7 + salt)


def example(seed, index):
    """Deterministic example: scene, both captions, an English and a Lithuanian prompt."""
    rng = rng_for(seed, index)
    scene = sample_scene(rng)
    return {"scene": scene, "en": caption_en(scene), "lt": caption_lt(scene),
            "prompt_en": rng.choice(PROMPTS_EN), "prompt_lt": rng.choice(PROMPTS_LT)}


def is_lithuanian(text):
    """True if the text looks Lithuanian: Lithuanian letters or grammar words."""
    if any(c in LT_LETTERS for c in text):
        return True
    words = [w.strip(".,").lower() for w in text.split()]
    return any(w in LT_WORDS for w in words)


def _check():
    import itertools
    # every attribute appears in a caption; gender agreement spot checks
    s = Scene([("circle", "red", "large", "left"), ("square", "blue", "small", "bottom")], "white")
    assert caption_en(s) == ("A large red circle on the left and a small blue square at the bottom, "
                             "on a white background."), caption_en(s)
    assert caption_lt(s) == ("Didelis raudonas apskritimas kairėje ir mažas mėlynas kvadratas "
                             "apačioje, baltame fone."), caption_lt(s)
    s = Scene([("star", "purple", "large", "centre")], "green")
    assert caption_lt(s) == "Didelė violetinė žvaigždė centre, žaliame fone.", caption_lt(s)
    assert caption_en(s) == "A large purple star in the centre, on a green background."
    s = Scene([("star", "green", "small", "right"), ("triangle", "orange", "small", "top")], "black")
    assert caption_lt(s) == "Maža žalia žvaigždė dešinėje ir mažas oranžinis trikampis viršuje, juodame fone."
    assert is_lithuanian(caption_lt(s)) and not is_lithuanian(caption_en(s))
    s = Scene([("square", "white", "small", "top")], "orange")
    assert caption_en(s) == "A small white square at the top, on an orange background."
    assert caption_lt(s) == "Mažas baltas kvadratas viršuje, oranžiniame fone."
    for sh, c, sz in itertools.product(SHAPES, COLOURS, SIZES):
        sc = Scene([(sh, c, sz, "left")], "red" if c != "red" else "blue")
        assert is_lithuanian(caption_lt(sc)) and not is_lithuanian(caption_en(sc))
    print("grammar checks OK")
    # distribution + token lengths with the LLaMA-2 tokenizer
    here = os.path.dirname(os.path.abspath(__file__))
    tok = os.path.join(here, "..", "..", "..", "shared", "tokenizers", "llama2.model")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tok)
    le, ll = [], []
    for i in range(2000):
        ex = example(1, i)
        le.append(len(sp.encode(ex["en"])))
        ll.append(len(sp.encode(ex["lt"])))
    print("tokens per caption: en mean %.1f max %d; lt mean %.1f max %d"
          % (sum(le) / len(le), max(le), sum(ll) / len(ll), max(ll)))
    ex = example(1, 0)
    print(ex["lt"], "->", [sp.id_to_piece(t) for t in sp.encode(ex["lt"])])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    if a.check:
        _check()
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        caps = OrderedDict()
        for i in range(a.start, a.start + a.count):
            ex = example(a.seed, i)
            name = "scene-%d-%04d.png" % (a.seed, i)
            render(ex["scene"]).save(os.path.join(a.out, name), optimize=True)
            caps[name] = OrderedDict([("en", ex["en"]), ("lt", ex["lt"]),
                                      ("prompt", ex["prompt_en"]),
                                      ("scene", ex["scene"].to_dict())])
        with open(os.path.join(a.out, "captions.json"), "w", encoding="utf-8") as f:
            json.dump(caps, f, indent=2, ensure_ascii=False)
            f.write("\n")
        print("wrote %d scenes to %s" % (a.count, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
