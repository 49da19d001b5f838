"""CLIP-I, DINO-I and CLIP-T (paper table 1) over a folder of generated videos.

Definitions (cosine similarity ``cos(a, b) = a.b / (|a| |b|)``, averaged over every pair):

    CLIP-I = mean_{frame f, reference r} cos(CLIP_img(f), CLIP_img(r))
    DINO-I = mean_{frame f, reference r} cos(DINO_cls(f), DINO_cls(r))
    CLIP-T = mean_{frame f}              cos(CLIP_img(f), CLIP_txt(prompt))

CLIP embeddings are the projected image / text embeddings; DINO uses the CLS token of the last
layer. For CLIP-T the subject token is removed from the prompt ("a <my-dog> dog" -> "a dog"):
CLIP has never seen it. Scores are per video, then averaged per subject and over all videos. Folder
layout (what `vwarper_hooks.apps.benchmark` writes)::

    RUN/references/<subject>/*.jpg|png      reference photos of each subject
    RUN/videos/<subject>/<name>.mp4|gif     generated videos
    RUN/videos/<subject>/<name>.json        {"prompt": "...", "token": "<my-dog>"}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import VwarperError
from ..images import IMAGE_SUFFIXES, load_images
from .visualize import read_video

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov")
METRICS = ("clip_i", "dino_i", "clip_t")


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over every pair of rows of a ``(N, D)`` and b ``(M, D)``."""
    a, b = (torch.nn.functional.normalize(x.double(), dim=-1) for x in (a, b))  # (N, D), (M, D)
    return float((a @ b.T).mean())


def clip_i(frames: torch.Tensor, references: torch.Tensor) -> float:
    """CLIP-I from CLIP image embeddings of the frames and of the reference photos."""
    return mean_cosine(frames, references)


def dino_i(frames: torch.Tensor, references: torch.Tensor) -> float:
    """DINO-I from DINO CLS embeddings of the frames and of the reference photos."""
    return mean_cosine(frames, references)


def clip_t(frames: torch.Tensor, prompt: torch.Tensor) -> float:
    """CLIP-T from CLIP image embeddings of the frames and the text embedding ``(1, D)`` of the prompt."""
    return mean_cosine(frames, prompt.reshape(1, -1))


def clip_prompt(prompt: str, token: str | None) -> str:
    """The prompt without the subject token (CLIP does not know it), spaces tidied."""
    if token:
        prompt = prompt.replace(token, " ")
    return re.sub(r"\s+", " ", prompt).strip()


class ClipEmbedder:
    """Projected CLIP image and text embeddings; pass `model` and `processor` to skip downloads."""

    def __init__(self, model_id: str = DEFAULT_CLIP, device: str = "cpu", model: Any = None,
                 processor: Any = None) -> None:
        if model is None or processor is None:
            from transformers import CLIPModel, CLIPProcessor

            model = model or _load(CLIPModel, model_id, "CLIP")
            processor = processor or _load(CLIPProcessor, model_id, "CLIP")
        self.model, self.processor, self.device = model.eval().to(device), processor, device

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled).float().cpu()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        pooled = self.model.text_model(**tokens).pooler_output
        return self.model.text_projection(pooled).float().cpu()


class DinoEmbedder:
    """DINO CLS-token embeddings (ViT); pass `model` and `processor` to skip downloads."""

    def __init__(self, model_id: str = DEFAULT_DINO, device: str = "cpu", model: Any = None,
                 processor: Any = None) -> None:
        if model is None or processor is None:
            from transformers import AutoImageProcessor, AutoModel

            model = model or _load(AutoModel, model_id, "DINO")
            processor = processor or _load(AutoImageProcessor, model_id, "DINO")
        self.model, self.processor, self.device = model.eval().to(device), processor, device

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu()


def _load(cls: Any, model_id: str, what: str) -> Any:
    """`cls.from_pretrained` of a hub id or a local folder; a folder (``~`` expanded) is read with
    ``local_files_only=True`` so that no network lookup (and no retrying) happens for it."""
    local = Path(model_id).expanduser()
    looks_local = model_id.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise VwarperError(
            f"Expected a {what} model folder at {str(local)!r}, but got {'a file' if local.exists() else 'nothing'}. "
            f"Pass an existing folder or a hub id (--{what.lower()}-model)."
        )
    try:
        if looks_local:
            return cls.from_pretrained(str(local), local_files_only=True)
        return cls.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise VwarperError(
            f"Expected a loadable {what} model {model_id!r}, but got: {first}. "
            f"Check the id, or download it first and pass its local folder (--{what.lower()}-model DIR)."
        ) from None


@dataclass
class VideoEntry:
    subject: str
    name: str
    path: Path
    prompt: str
    token: str | None = None


@dataclass
class EvalReport:
    """Per-video scores, per-subject and overall means."""

    videos: list[dict[str, Any]] = field(default_factory=list)
    subjects: dict[str, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def find_videos(run: str | Path) -> list[VideoEntry]:
    """Every ``videos/<subject>/<name>.<video>`` with its ``<name>.json`` prompt file, sorted."""
    root = Path(run) / "videos"
    if not root.is_dir():
        raise VwarperError(f"Expected a folder {root} with videos/<subject>/<name>.mp4, but got none. "
                           "See README 'Metrics' for the layout, or run the benchmark first.")
    entries = []
    for path in sorted(root.glob("*/*")):
        if path.suffix.lower() not in VIDEO_SUFFIXES or path.name.startswith("."):
            continue  # not a video, or an unfinished temporary file
        meta_file = path.with_suffix(".json")
        if not meta_file.is_file():
            raise VwarperError(f"Expected {meta_file.name} with the prompt next to {path}, but got none. "
                               'Write {"prompt": "...", "token": "<x>"} there.')
        try:
            meta = json.loads(meta_file.read_text())
            prompt, token = meta["prompt"], meta.get("token")
            if not isinstance(prompt, str):
                raise TypeError(f"prompt is a {type(prompt).__name__}")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise VwarperError(f"Expected {meta_file} to hold a JSON object with a string \"prompt\", but got: "
                               f"{exc!r}. Fix that file.") from None
        entries.append(VideoEntry(path.parent.name, path.stem, path, prompt, token))
    if not entries:
        raise VwarperError(f"Expected videos ({', '.join(VIDEO_SUFFIXES)}) under {root}/<subject>/, but got none.")
    return entries


def reference_images(folder: Path) -> list[Image.Image]:
    files = sorted(f for f in folder.glob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise VwarperError(f"Expected reference photos in {folder}, but got none. "
                           "Put the subject's photos there or pass --references DIR.")
    return load_images(files)


def _model_name(model: Any) -> str:  # the checkpoint's id, else the class
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def evaluate(
    run: str | Path,
    references: str | Path | None = None,
    clip: ClipEmbedder | None = None,
    dino: DinoEmbedder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Score every video of a run folder (see the module docstring for the layout)."""
    entries = find_videos(run)
    ref_root = Path(references) if references else Path(run) / "references"
    clip = clip or ClipEmbedder()
    dino = dino or DinoEmbedder()
    report = EvalReport(models={"clip": _model_name(clip.model), "dino": _model_name(dino.model)})
    ref_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, entry in enumerate(entries):
        if entry.subject not in ref_cache:
            refs = reference_images(ref_root / entry.subject)
            ref_cache[entry.subject] = (clip.images(refs), dino.images(refs))
        ref_clip, ref_dino = ref_cache[entry.subject]
        frames = [Image.fromarray(f) for f in read_video(entry.path)]
        frame_clip = clip.images(frames)
        text = clip_prompt(entry.prompt, entry.token)
        report.videos.append({
            "subject": entry.subject, "video": entry.name, "prompt": text, "frames": len(frames),
            "clip_i": clip_i(frame_clip, ref_clip), "dino_i": dino_i(dino.images(frames), ref_dino),
            "clip_t": clip_t(frame_clip, clip.texts([text])),
        })
        if progress:
            progress(i + 1, len(entries))
    for subject in sorted({v["subject"] for v in report.videos}):
        rows = [v for v in report.videos if v["subject"] == subject]
        report.subjects[subject] = {m: _mean([r[m] for r in rows]) for m in METRICS}
    report.overall = {m: _mean([r[m] for r in report.videos]) for m in METRICS}
    return report


def _tiny_clip_tokenizer(vocab: dict[str, int]) -> Any:
    """CLIP's fast tokenizer over a character vocabulary, built with the `tokenizers` library (CLIP's
    normalizer, pre-tokenizer and BPE without merges), so it works on transformers 4.x and 5.x alike."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import CLIPTokenizerFast

    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    backend = Tokenizer(BPE(vocab=vocab, merges=[], continuing_subword_prefix="", end_of_word_suffix="</w>",
                            fuse_unk=False, unk_token=special["eos_token"]))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.RobertaProcessing(
        (special["eos_token"], vocab[special["eos_token"]]), (special["bos_token"], vocab[special["bos_token"]]),
        trim_offsets=False, add_prefix_space=False,
    )
    return CLIPTokenizerFast(tokenizer_object=backend, unk_token=special["eos_token"], pad_token=special["eos_token"],
                             model_max_length=77, **special)


def tiny_clip_embedder() -> ClipEmbedder:
    """A random CLIP small enough for tests (32 px images, character-level tokenizer), built in code."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz.,<>-":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = _tiny_clip_tokenizer(vocab)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, eos_token_id=1, bos_token_id=0,
                         pad_token_id=1, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    return ClipEmbedder(model=CLIPModel(config), processor=CLIPProcessor(image_processor=images, tokenizer=tokenizer))


def tiny_dino_embedder() -> DinoEmbedder:
    """A random DINO-style ViT (32 px, patch 16) built in code, for tests."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=16)
    return DinoEmbedder(model=ViTModel(config, add_pooling_layer=False),
                        processor=ViTImageProcessor(size={"height": 32, "width": 32}))
