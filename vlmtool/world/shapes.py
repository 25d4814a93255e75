"""The world's scenes, samples and videos (make_world in build.py writes them as shards).

Each image holds objects in named colours at known boxes (which objects, and how they co-occur,
is the world kind's: scenes.py); its caption names them and how they sit ("a red heart to the
left of a blue oval"); its JSON keeps the truth, and the scene type. Optional: a
fraction of mismatched captions (truth kept in the JSON), a fraction of broken samples of every
kind the core rejects, a truncated last shard, and short videos with known static and moving
segments. Same seed, same bytes: every sample draws from its own generator seeded by
(seed, index).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from vlmtool.world.scenes import DEFAULT_KIND, world_kind

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 135, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZE_MIXES: dict[str, list[tuple[int, int, float]]] = {
    # width, height, weight: square crops, the 336 px LLaVA size, full HD, tall and wide.
    "varied": [(96, 96, 0.08), (224, 160, 0.1), (160, 224, 0.1), (256, 256, 0.2), (336, 336, 0.2), (640, 480, 0.16),
               (1920, 1080, 0.04), (300, 900, 0.06), (1200, 300, 0.06)],
    "small": [(64, 64, 0.3), (96, 96, 0.3), (128, 96, 0.15), (96, 128, 0.15), (160, 160, 0.1)],
    # square only: a tower's centre crop keeps every object (the demo's worlds)
    "square": [(64, 64, 0.3), (96, 96, 0.35), (128, 128, 0.25), (160, 160, 0.1)],
}
BROKEN_KINDS = ("corrupt_image", "truncated_image", "image_too_large", "missing_image", "missing_caption",
                "empty_caption", "bad_caption_encoding")


@dataclass
class Obj:
    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1

    @property
    def center(self) -> tuple[float, float]:
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2

    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def with_article(self, colour: bool = True) -> str:
        name = self.name() if colour else self.shape
        return ("an " if name[0] in "aeiou" else "a ") + name

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "bbox": list(self.bbox)}


def seeded_rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def layout(rng: np.random.Generator, width: int, height: int, shapes: list[str]) -> list[Obj]:
    """Place shapes in non-overlapping boxes; a shape that finds no room is left out."""
    objs: list[Obj] = []
    colors = list(COLORS)
    side = min(width, height)
    lo, hi = (0.2, 0.38) if len(shapes) <= 4 else (0.16, 0.28)  # five or six objects: smaller, so they fit
    for shape in shapes:
        for _ in range(60):
            s = int(side * rng.uniform(lo, hi))
            s = max(s, 8)
            x0 = int(rng.integers(0, max(1, width - s)))
            y0 = int(rng.integers(0, max(1, height - s)))
            box = (x0, y0, x0 + s, y0 + s)
            if all(box[2] <= o.bbox[0] or o.bbox[2] <= box[0] or box[3] <= o.bbox[1] or o.bbox[3] <= box[1] for o in objs):
                used = {o.color for o in objs}
                free = [c for c in colors if c not in used]
                objs.append(Obj(shape, free[int(rng.integers(len(free)))], box))
                break
    return objs


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "hexagon":
        return [(cx + r * math.cos(math.pi / 3 * k), cy + r * math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + math.pi / 5 * k
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "arrow":  # pointing right: a shaft and a head
        t = r * 0.35
        return [(x0, cy - t), (cx, cy - t), (cx, y0), (x1, cy), (cx, y1), (cx, cy + t), (x0, cy + t)]
    if shape == "hourglass":  # two triangles meeting at the centre
        return [(x0, y0), (x1, y0), (cx, cy), (x1, y1), (x0, y1), (cx, cy)]
    raise ValueError(shape)


def _draw_one(d, img, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    s = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    line = max(2, s // 5)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=line)
    elif shape == "frame":
        d.rectangle(box, outline=fill, width=line)
    elif shape == "bar":  # a wide, low block
        d.rectangle((x0, cy - s * 0.18, x1, cy + s * 0.18), fill=fill)
    elif shape == "oval":  # an upright ellipse
        d.ellipse((cx - s * 0.3, y0, cx + s * 0.3, y1), fill=fill)
    elif shape == "cross":
        t = s * 0.17
        d.rectangle((cx - t, y0, cx + t, y1), fill=fill)
        d.rectangle((x0, cy - t, x1, cy + t), fill=fill)
    elif shape == "semicircle":  # the top half of a disc, flat side down
        d.pieslice((x0, y0 + s * 0.25, x1, y1 + s * 0.25), 180, 360, fill=fill)
    elif shape == "heart":
        q = s / 4
        d.ellipse((x0, y0, cx + 1, cy + 1), fill=fill)
        d.ellipse((cx - 1, y0, x1, cy + 1), fill=fill)
        d.polygon([(x0 + 1, cy - q * 0.3), (x1 - 1, cy - q * 0.3), (cx, y1)], fill=fill)
    elif shape == "crescent":  # a disc with a bite taken out of its right side
        from PIL import Image, ImageDraw

        mask = Image.new("L", (s + 1, s + 1), 0)
        m = ImageDraw.Draw(mask)
        m.ellipse((0, 0, s, s), fill=255)
        m.ellipse((s * 0.35, -s * 0.05, s * 1.15, s * 0.95), fill=0)
        img.paste(fill, (x0, y0), mask)
    else:
        d.polygon(_polygon(shape, box), fill=fill)


def draw_objects(img, objs: list[Obj]) -> None:
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    for o in objs:
        _draw_one(d, img, o.shape, o.bbox, COLORS[o.color])


def background(rng: np.random.Generator) -> tuple[int, int, int]:
    base = int(rng.integers(110, 180))
    return tuple(int(np.clip(base + rng.integers(-20, 21), 0, 255)) for _ in range(3))  # type: ignore[return-value]


def relation(a: Obj, b: Obj) -> str:
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def caption_for(objs: list[Obj], rng: np.random.Generator, colours: bool = True) -> str:
    """The scene's caption; without colours it names the shapes alone ("A circle above a star.")."""
    names = [o.with_article(colours) for o in objs]
    if len(objs) == 1:
        forms = ["{0}.", "A photo of {0}.", "{0} on a plain background.", "There is {0} in the picture."]
        text = forms[int(rng.integers(len(forms)))].format(names[0])
    else:
        text = f"{names[0]} {relation(objs[0], objs[1])} {names[1]}"
        rest = names[2:]
        if rest:
            text += ", with " + " and ".join(rest)
        forms = ["{0}.", "A picture of {0}.", "In this image, {0}."]
        text = forms[int(rng.integers(len(forms)))].format(text)
    return text[0].upper() + text[1:]


def render_scene(seed: int, index: int, sizes: str = "varied", kind: str = DEFAULT_KIND):
    """(image, objects, caption, scene type or None) of sample `index`: a pure function of
    (seed, index, sizes, kind)."""
    from PIL import Image

    rng = seeded_rng(seed, index, 0)
    mix = SIZE_MIXES[sizes]
    w, h, _ = mix[int(rng.choice(len(mix), p=np.array([m[2] for m in mix]) / sum(m[2] for m in mix)))]
    img = Image.new("RGB", (w, h), background(rng))
    scene, labels = world_kind(kind).pick(rng)
    objs = layout(rng, w, h, labels)
    draw_objects(img, objs)
    return img, objs, caption_for(objs, rng), scene


def _jpeg(img, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_BOMB: bytes | None = None


def bomb_png() -> bytes:
    """A 12000x12000 PNG (144 Mpx, above PIL's 89 Mpx bomb threshold) of a few KB."""
    global _BOMB
    if _BOMB is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("1", (12000, 12000)).save(buf, format="PNG", optimize=True)
        _BOMB = buf.getvalue()
    return _BOMB


def make_sample(seed: int, index: int, *, mismatch: float = 0.0, broken: float = 0.0, sizes: str = "varied",
                plain: float = 0.0, kind: str = DEFAULT_KIND) -> dict:
    """One webdataset record (bytes members) and its truth. A `plain` fraction of captions name the
    shapes without their colours (drawn from a stream of their own: other samples are unchanged)."""
    img, objs, caption, scene = render_scene(seed, index, sizes, kind)
    plain_rng = seeded_rng(seed, index, 2)
    colours = not (plain and plain_rng.random() < plain)
    if not colours:
        caption = caption_for(objs, plain_rng, colours=False)
    rng = seeded_rng(seed, index, 1)
    meta = {"index": index, "seed": seed, "width": img.width, "height": img.height,
            "objects": [o.to_json() for o in objs], "caption_true": caption, "mismatched": False, **({} if colours else {"plain": True}),
            **({"scene": scene} if scene else {})}
    if mismatch and rng.random() < mismatch:
        # Another scene's caption, redrawn until it names a different set of shapes.
        k = 0
        while True:
            k += 1
            other_rng = seeded_rng(seed, index, 100 + k)
            other = layout(other_rng, img.width, img.height, world_kind(kind).pick(other_rng)[1])
            if {o.shape for o in other} != {o.shape for o in objs} and other:
                break
        caption = caption_for(other, other_rng, colours)
        meta["mismatched"] = True
    rec: dict = {"__key__": f"{index:09d}", "jpg": _jpeg(img), "txt": caption.encode()}
    if broken and rng.random() < broken:
        kind = BROKEN_KINDS[int(rng.integers(len(BROKEN_KINDS)))]
        meta["broken"] = kind
        if kind == "corrupt_image":
            rec["jpg"] = rng.bytes(600)
        elif kind == "truncated_image":
            data = rec["jpg"]
            sos = data.find(b"\xff\xda")  # start of scan: keep every header, cut the pixel data
            rec["jpg"] = data[: sos + (len(data) - sos) // 2]
        elif kind == "image_too_large":
            del rec["jpg"]
            rec["png"] = bomb_png()
        elif kind == "missing_image":
            del rec["jpg"]
        elif kind == "missing_caption":
            del rec["txt"]
        elif kind == "empty_caption":
            rec["txt"] = b"  \n"
        elif kind == "bad_caption_encoding":
            rec["txt"] = b"a red \xff\xfe circle \xc3\x28"
    rec["json"] = orjson.dumps(meta)
    return rec


def make_video(path: Path, seed: int, index: int, fps: int = 12, seconds: float = 10.0, size=(160, 120), segment_s: float = 2.5,
               kind: str = DEFAULT_KIND) -> dict:
    """A short MPEG-4 video of shapes with alternating static and moving segments.

    Returns the truth: fps, frames, size and the segments (start_s, end_s, kind).
    """
    import av
    from PIL import Image

    rng = seeded_rng(seed, index, 7)
    w, h = size
    n_seg = max(1, round(seconds / segment_s))
    first_static = bool(rng.integers(2))
    kinds = [("static" if (i % 2 == 0) == first_static else "moving") for i in range(n_seg)]
    segments = [(round(i * segment_s, 6), round(min(seconds, (i + 1) * segment_s), 6), k) for i, k in enumerate(kinds)]
    bg = background(rng)
    objs = layout(rng, w, h, world_kind(kind).pick(rng)[1]) or layout(rng, w, h, ["circle"])
    mover = objs[0]
    n_frames = round(seconds * fps)
    pos = np.array(mover.bbox[:2], dtype=float)
    vel = rng.uniform(-1, 1, size=2)
    vel = vel / (np.linalg.norm(vel) + 1e-9) * max(w, h) / fps * 0.5  # crosses half the frame a second
    s = mover.bbox[2] - mover.bbox[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: same bytes every run
        stream.codec_context.gop_size = n_frames  # one keyframe: no quality jumps in static stretches
        stream.options = {"qscale": "3"}
        for f in range(n_frames):
            t = f / fps
            kind = kinds[min(int(t // segment_s), n_seg - 1)]
            if kind == "moving":
                pos += vel
                for ax, lim in ((0, w - s), (1, h - s)):
                    if pos[ax] < 0 or pos[ax] > lim:
                        vel[ax] = -vel[ax]
                        pos[ax] = float(np.clip(pos[ax], 0, lim))
            moved = Obj(mover.shape, mover.color, (int(pos[0]), int(pos[1]), int(pos[0]) + s, int(pos[1]) + s))
            img = Image.new("RGB", (w, h), bg)
            draw_objects(img, [moved, *objs[1:]])
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return {"fps": fps, "frames": n_frames, "seconds": seconds, "width": w, "height": h,
            "segments": [{"start": a, "end": b, "kind": k} for a, b, k in segments],
            "objects": [o.to_json() for o in objs]}
