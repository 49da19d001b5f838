"""The README's first Python example runs as written on the tiny random pipeline (offline, CPU); its tiny
`vwarper generate` commands need no warning.

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


def tiny_generate_commands() -> tuple[str, list[str]]:
    """The README (line continuations joined) and each `vwarper generate --model tiny` command in it."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return text, re.findall(r"vwarper generate --model tiny(?:[^`\n]|\n(?!\n|```))*", text)


def test_the_readme_tiny_generate_commands_warp_their_whole_window():
    """A run shorter than the default warp window (steps 3-19) warns that it dropped steps."""
    from vwarper_hooks import WarpConfig
    from vwarper_hooks.contract.plan import StepPlan

    _, commands = tiny_generate_commands()
    assert len(commands) >= 2, commands
    for command in commands:
        steps = re.search(r"--steps (\d+)", command)
        plan = StepPlan.build(WarpConfig(), int(steps.group(1)) if steps else 50, depth=42)
        assert plan.clipped is None, (command, plan.clipped)


def test_the_readme_says_where_generate_is_shown_that_mp4_needs_imageio_ffmpeg():
    text, commands = tiny_generate_commands()
    after = text.split(commands[-1], 1)[1].split("```", 1)[1].split("\n\n")[1]  # the paragraph after the block
    assert "imageio-ffmpeg" in after and "NAME.gif" in after, after
