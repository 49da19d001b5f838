"""Benchmark runner: two accelerate processes share the jobs, a rerun skips finished videos, eval follows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.apps.benchmark import is_done, load_jobs
from vwarper_hooks.errors import VwarperError

SAMPLES = Path(vwarper.__file__).parent / "data" / "clock"
TINY = ["--model", "tiny", "--frames", "5", "--steps", "4", "--height", "32", "--width", "32", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    """Two subjects (no coarse stage: the fine stage alone) x two prompt templates."""
    root = tmp_path_factory.mktemp("bench")
    images = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    vwarper.Subject.from_images(images[:2], token="<clock>", class_word="clock").save(root / "subjects" / "clock")
    vwarper.Subject.from_images(images[2:], token="<dog>", class_word="dog").save(root / "subjects" / "dog")
    spec = {"subjects": {"clock": "subjects/clock", "dog": "subjects/dog"},
            "prompts": ["a {token} {class_word} on the beach", "a {token} {class_word} in the snow"]}
    (root / "spec.json").write_text(json.dumps(spec))
    return root / "spec.json"


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory) -> list[str]:
    from vwarper_hooks.apps.evaluation import tiny_clip_embedder, tiny_dino_embedder

    root = tmp_path_factory.mktemp("models")
    for name, embedder in (("clip", tiny_clip_embedder()), ("dino", tiny_dino_embedder())):
        embedder.model.save_pretrained(root / name)
        embedder.processor.save_pretrained(root / name)
    return ["--clip-model", str(root / "clip"), "--dino-model", str(root / "dino")]


def test_jobs_from_spec(spec):
    jobs = load_jobs(spec)
    assert [(j.subject, j.name, j.prompt) for j in jobs] == [
        ("clock", "00", "a <clock> clock on the beach"), ("clock", "01", "a <clock> clock in the snow"),
        ("dog", "00", "a <dog> dog on the beach"), ("dog", "01", "a <dog> dog in the snow")]
    with pytest.raises(VwarperError, match="Expected a readable JSON spec"):
        load_jobs(spec.parent / "missing.json")


@pytest.mark.parametrize(("content", "match"), [
    ([1, 2], "Expected a JSON object"),
    ({"subjects": {"clock": "subjects/clock"}, "prompts": ["a {token} {oops}"]}, "only {token} and {class_word}"),
    ({"subjects": {"clock": "subjects/clock"}, "prompts": {"dog": ["a {token}"]}}, "prompts for subject 'clock'"),
    ({"subjects": {"cat": "subjects/cat"}, "prompts": ["a {token}"]}, "subject directory for 'cat'"),
])
def test_bad_specs_say_what_is_wrong(spec, content, match):
    bad = spec.parent / "bad.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(VwarperError, match=match):
        load_jobs(bad)


def test_two_processes_then_resume_then_eval(spec, eval_models, tmp_path):
    out = tmp_path / "run"
    # --multi_gpu on a machine without GPUs: torchrun with 2 CPU processes (gloo)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
              "--main_process_port", str(_free_port()),
              "-m", "vwarper_hooks.apps.benchmark", "--spec", str(spec), "--out", str(out), *TINY, "--no-eval"]
    first = subprocess.run(launch, capture_output=True, text=True, timeout=180, env=_env())
    assert first.returncode == 0, first.stderr[-3000:]
    assert "process 0: generated 2, skipped 0" in first.stdout and "process 1: generated 2, skipped 0" in first.stdout
    jobs = load_jobs(spec)
    assert all(is_done(out, job) for job in jobs)
    assert len(list((out / "references" / "dog").glob("*.png"))) == 1

    # lose one video; the rerun (one plain process) makes only that one and then scores everything
    lost = jobs[1]
    for f in (out / "videos" / lost.subject).glob(f"{lost.name}.*"):
        f.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "videos").rglob("*") if p.is_file()}
    rerun = [sys.executable, "-m", "vwarper_hooks.apps.benchmark", "--spec", str(spec), "--out", str(out), *TINY,
             *eval_models]
    second = subprocess.run(rerun, capture_output=True, text=True, timeout=120, env=_env())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "process 0: generated 1, skipped 3" in second.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert is_done(out, lost)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["videos"]) == 4 and set(metrics["subjects"]) == {"clock", "dog"}
    from vwarper_hooks.apps.evaluation import ClipEmbedder, DinoEmbedder, evaluate

    clip, dino = ClipEmbedder(eval_models[1]), DinoEmbedder(eval_models[3])  # the same model folders
    assert metrics["overall"] == pytest.approx(evaluate(out, clip=clip, dino=dino).overall, abs=1e-5)


def test_the_readme_command_shards_the_jobs_on_cpu_without_a_device_flag(spec, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 ...` as the README writes it, on a machine without GPUs:
    each process runs its half of the 4 jobs (before: both ran all 4 and wrote the same files)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --multi_gpu would use it")
    tiny = [a for a in TINY if a not in ("--device", "cpu")]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()),
              "-m", "vwarper_hooks.benchmark_runner", "--spec", str(spec), "--out", str(tmp_path / "run"), *tiny,
              "--no-eval"]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=180, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    import re

    counts = sorted(re.findall(r"process (\d+): generated (\d+), skipped (\d+)", done.stdout))
    assert counts == [("0", "2", "0"), ("1", "2", "0")], done.stdout


def test_data_parallel_times_context_parallel_makes_each_video_once(spec, tmp_path):
    """4 torchrun processes, --context-parallel 2: two groups of two ranks share the 4 jobs, each group's
    first rank writes; the videos are the ones a single process makes."""
    pytest.importorskip("diffusers", minversion="0.36")
    wan = ["--model", "tiny:wan", *TINY[2:], "--no-eval"]
    runner = str(Path(__file__).resolve().parent / "context_parallel_runner.py")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", runner,
              "--context-parallel", "2", "--spec", str(spec), "--out", str(tmp_path / "cp"), *wan]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for process in range(4):  # each group makes its 2 of the 4 jobs, on both of its ranks
        assert f"process {process}: generated 2, skipped 0" in done.stdout
    one = [sys.executable, "-m", "vwarper_hooks.apps.benchmark", "--spec", str(spec), "--out", str(tmp_path / "one"),
           *wan]
    alone = subprocess.run(one, capture_output=True, text=True, timeout=180, env=_env())
    assert alone.returncode == 0, alone.stderr[-3000:]
    from vwarper_hooks.apps.evaluation import VIDEO_SUFFIXES
    from vwarper_hooks.apps.visualize import read_video

    def video(root: Path, job) -> np.ndarray:
        folder = root / "videos" / job.subject
        return read_video(next(p for p in folder.glob(f"{job.name}.*") if p.suffix in VIDEO_SUFFIXES))

    for job in load_jobs(spec):
        assert is_done(tmp_path / "cp", job)
        split, single = video(tmp_path / "cp", job), video(tmp_path / "one", job)
        assert split.shape == single.shape
        assert np.abs(split.astype(int) - single.astype(int)).max() <= 2  # the same frames, encoded the same way


def test_context_parallel_needs_a_process_count_it_divides():
    from vwarper_hooks.apps.parallel import Layout

    assert Layout.of(8, 5, 2) == Layout(groups=4, group=2, ranks=2, member=1)
    assert Layout.of(3, 2, 1).share(list(range(7))) == [2, 5]
    with pytest.raises(VwarperError, match="divisible by --context-parallel 2"):
        Layout.of(3, 0, 2)
