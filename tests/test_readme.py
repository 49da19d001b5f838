"""The README's first Python example runs as written on the tiny random pipeline (offline, CPU).

Two lines are swapped, each checked to be in the README verbatim: the `from_pretrained` line (no
downloads, no CUDA here) and the stage-1 config (1000 steps of the paper would take minutes).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SWAPS = {
    'pipe = CogVideoXPipeline.from_pretrained("THUDM/CogVideoX-5b", torch_dtype=torch.bfloat16).to("cuda")':
        "from vwarper_hooks.testing import tiny_cogvideox_pipeline\npipe = tiny_cogvideox_pipeline()",
    "coarse = vwarper.CoarseConfig()  # the paper's stage 1: LoRA rank 128 on K/V/O, 1000 steps":
        "coarse = vwarper.CoarseConfig(steps=3, rank=4, mixed_precision='no', gradient_checkpointing=False)",
}


def first_python_example() -> str:
    return re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


def test_readme_example_runs_on_the_tiny_pipeline(monkeypatch, capsys):
    code = first_python_example()
    for line, swap in SWAPS.items():
        assert line in code, f"README example changed: update SWAPS for {line!r}"
        code = code.replace(line, swap)
    from vwarper_hooks.testing import VOCAB_WORDS, tiny_tokenizer

    token = re.search(r'token="([^"]+)"', code).group(1)
    assert token not in VOCAB_WORDS and token not in tiny_tokenizer().get_vocab()  # a new word, as in real use
    monkeypatch.chdir(ROOT)  # the example reads examples/images/clock/
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    frames, session = namespace["frames"], namespace["session"]
    assert len(frames) == 25 and not torch.cuda.is_initialized()
    steps = sorted(session.diagnostics)
    assert steps == list(range(3, 20)) and str(steps) in capsys.readouterr().out
