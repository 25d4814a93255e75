"""Peak RSS of `vlmtool infer` against the pixels of its input: bounded by --max-pixels and the
batch, whatever the image says it holds.

    python bench/infer_rss.py [--tiny]

Builds a tiny checkpoint (a random tiny-clip tower, the bundled LM, 2 steps), writes PNGs of
growing pixel counts (solid colour: a few KB on disk each), and runs `vlmtool infer --questions`
in a fresh process per case, reading the child's peak RSS (ru_maxrss). Prints one row per case
and the ratio of the largest case's peak to the smallest's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def checkpoint(root: Path) -> Path:
    from test_train_data import make_instructions, make_tower_features, tiny_opts

    from vlmtool.vlm.train import run_train

    feats = make_tower_features(root / "feats")
    ins = make_instructions(root / "ins.jsonl", feats)
    run_train([str(feats)], str(root / "ck"), tiny_opts(stage=2, instructions=str(ins), steps=2))
    return root / "ck"


_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stdout.write(r.stdout); sys.stderr.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
         "sys.exit(r.returncode)")


def peak_rss_mb(args: list[str]) -> tuple[float, list[dict]]:
    """Run `args` under a fresh wrapper process, whose children's peak RSS is this one run's."""
    r = subprocess.run([sys.executable, "-c", _WRAP, *args], capture_output=True, text=True, check=True)
    return int(r.stderr.strip().splitlines()[-1]) / 1024, [json.loads(x) for x in r.stdout.splitlines()]


def main() -> None:
    from PIL import Image

    tiny = "--tiny" in sys.argv
    sides = [500, 1500] if tiny else [500, 2000, 4000, 8000]
    batch = 4
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        ck = checkpoint(root)
        rows = []
        for side in sides:
            Image.new("RGB", (side, side), (200, 30, 30)).save(root / f"{side}.png")
            (root / f"q{side}.jsonl").write_text("".join(json.dumps({"image": f"{side}.png", "question": "What colour?"}) + "\n"
                                                         for _ in range(batch)))
        for cap in ((1_000_000,) if tiny else (None, 1_000_000)):
            for side in sides:
                args = [sys.executable, "-m", "vlmtool", "infer", "-c", str(ck), "--questions", str(root / f"q{side}.jsonl"), "--json",
                        "--device", "cpu", "--max-new-tokens", "2", "--batch-size", str(batch)]
                if cap:
                    args += ["--max-pixels", str(cap)]
                peak, out = peak_rss_mb(args)
                ok = sum("answer" in r for r in out)
                rows.append((cap, side, peak, ok))
                print(f"max_pixels={cap or 'default'} image={side}x{side} ({side * side / 1e6:.1f} MP) x{batch}: "
                      f"peak RSS {peak:.0f} MB, answered {ok}/{batch}")
    capped = [r for r in rows if r[0]]
    print(f"with --max-pixels 1000000: largest/smallest input peak RSS = {capped[-1][2] / capped[0][2]:.2f}x "
          f"(flat: an image over the cap is refused from its header, never decoded)")


if __name__ == "__main__":
    main()
