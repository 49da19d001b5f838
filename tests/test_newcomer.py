"""What a newcomer meets first: labelled figures, analyze defaults, inspect's summary, offline eval of
local model folders, progress bars on stderr and --quiet."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import generate

import vwarper_hooks as vwarper
from vwarper_hooks.apps import figures
from vwarper_hooks.apps import visualize as vis
from vwarper_hooks.apps.cli import main

SAMPLES = Path(vwarper.__file__).parent / "data" / "clock"


def _labelled(fig) -> None:
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert ax.get_legend() is not None and ax.get_legend().get_texts()
    assert all(label.get_text() for label in ax.get_yticklabels())


def test_masks_and_figure5_have_titles_axis_labels_and_a_legend(tmp_path, pipe, subject, clock_image):
    frames, session = generate(pipe, subject, vwarper.WarpConfig(warp_steps=(3, 4)), steps=5)
    diagnostics = session.diagnostics
    masks = figures.mask_figure(diagnostics)
    _labelled(masks)
    assert [t.get_text() for t in masks.axes[0].get_yticklabels()] == ["step 3", "step 4"]
    video = vis.to_uint8(frames)
    tiles, layout = vis.correspondence_figure(clock_image, video, diagnostics[4])
    figure = figures.figure5(tiles, layout)
    _labelled(figure)
    assert "generated" in figure.axes[0].get_yticklabels()[0].get_text()
    path = figures.save(figure, tmp_path / "figure5.png")
    assert path.stat().st_size > 0


def test_analyze_defaults_print_no_nan_and_plot_something(tmp_path, capsys):
    assert main(["analyze", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    rows = (tmp_path / "a" / "pck.csv").read_text().splitlines()[1:]
    assert rows and all(math.isfinite(float(r.split(",")[2])) for r in rows)
    assert main(["analyze", "--out", str(tmp_path / "b"), "--size", "32", "32", "--shift", "2"]) == 3
    assert "wider than --shift" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_inspect_prints_its_summary_before_the_layer_table(capsys):
    assert main(["inspect", "--tiny", "cogvideox"]) == 0
    text = capsys.readouterr().out
    assert text.index("depth: 42") < text.index("attention") and text.index("adapter: cogvideox") < 400
    assert main(["inspect", "--tiny", "cogvideox", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out))[-1] == "attention"


def test_eval_with_local_model_folders_never_touches_the_network(tmp_path):
    """Folders, '~' included, are read with local_files_only: no DNS lookup, no connection, no retries."""
    script = textwrap.dedent(f"""
        import json, shutil, sys
        from pathlib import Path
        events = []
        sys.addaudithook(lambda e, a: events.append(e) if e in ("socket.getaddrinfo", "socket.connect") else None)
        import numpy as np
        from vwarper_hooks.apps.cli import main
        from vwarper_hooks.apps.evaluation import tiny_clip_embedder, tiny_dino_embedder
        from vwarper_hooks.apps.visualize import write_video
        home, run = Path({str(tmp_path)!r}), Path({str(tmp_path / "run")!r})
        for name, embedder in (("clip", tiny_clip_embedder()), ("dino", tiny_dino_embedder())):
            embedder.model.save_pretrained(home / name)
            embedder.processor.save_pretrained(home / name)
        (run / "references" / "clock").mkdir(parents=True)
        (run / "videos" / "clock").mkdir(parents=True)
        shutil.copy({str(SAMPLES / "00.jpg")!r}, run / "references" / "clock" / "00.jpg")
        write_video(np.full((3, 32, 32, 3), 99, np.uint8), run / "videos" / "clock" / "a")
        (run / "videos" / "clock" / "a.json").write_text(json.dumps({{"prompt": "a <c> clock", "token": "<c>"}}))
        code = main(["eval", str(run), "--clip-model", "~/clip", "--dino-model", str(home / "dino"), "-q"])
        print(json.dumps({{"code": code, "events": events}}))
    """)
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "events": []}, done.stderr[-2000:]


def test_progress_bars_go_to_stderr_and_quiet_silences_them(tmp_path):
    def run(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "vwarper_hooks.apps.cli", "demo", "--out", str(tmp_path / str(len(extra))),
               "--train-steps", "2", "--steps", "3", "--size", "32", "--frames", "9", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    loud, quiet = run(), run("--quiet")
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "train" in loud.stderr and "━" in loud.stderr and "━" not in loud.stdout.split("written to")[0]
    assert "━" not in quiet.stderr and "written to" in quiet.stdout
