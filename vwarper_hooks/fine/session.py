"""The injection session: routes attention calls, runs the reference branch, keeps diagnostics.

A `Session` is the `LayerRouter` the adapter's processors talk to. Around every transformer
call of the pipeline's denoising loop it works out the step index, prepares the reference
branch lazily at the first step, computes the step's flow and mask from the previous step's
match-layer features, runs the reference forward (only the layers needed, then stops), and
finally lets the generation forward through with warping at the configured layers.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from typing import Any

import torch

from ..adapter import Adapter, AttentionCall
from ..config import WarpConfig
from ..errors import SubjectTokenError, VwarperError
from ..files import tensor_digest
from ..images import image_to_video
from .cycle import cycle_mask
from .diagnostics import StepDiagnostics
from .foreground import ForegroundAccumulator
from .inversion import invert_reference
from .matching import match_flows
from .reference_cache import ReferenceState, cache_key
from .steps import StepPlan, step_index
from .warping import Injector, ReferenceFeatures, WarpPlan

logger = logging.getLogger(__name__)

GENERATION, REFERENCE, INTERNAL = "generation", "reference", "internal"


def _as_kwargs(module: Any, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments as keywords (the pipelines pass keywords; tolerate positionals)."""
    if not args:
        return kwargs
    return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)


class _StopReference(Exception):
    """Raised after the deepest layer the reference branch needs (early exit)."""


class Session:
    """State of one `inject` block. `diagnostics` maps warp step -> `StepDiagnostics`.

    `config` is the one `inject.validate` returns, with the adapter's default layers filled in.
    """

    def __init__(self, pipe: Any, adapter: Adapter, subject: Any, config: WarpConfig, injector: Injector) -> None:
        self.pipe, self.adapter, self.subject, self.config, self.injector = pipe, adapter, subject, config, injector
        self.transformer = pipe.transformer
        self.depth = len(adapter.attention_layers(self.transformer))
        #: warp step -> diagnostics still on the model's device; moved to CPU when first read, so the
        #: denoising loop never waits on a device-to-host copy (see the `diagnostics` property)
        self._diagnostics: dict[int, StepDiagnostics] = {}
        #: (branch, step, layer) -> number of routed attention calls; "warp" entries count injections
        self.calls: Counter[tuple[str, int, int]] = Counter()
        self.branch: str | None = None
        self.step: int | None = None
        self.plan: StepPlan | None = None
        self._wanted: frozenset[int] = frozenset()
        self._deepest = -1
        self._last_step: int | None = None
        self._new_run = False
        self._pass = 0  # index of the transformer call within the current step
        self._subject_ids = self._token_ids(subject.token) if subject is not None else []
        self._subject_variants = self._variants() if self._subject_ids else []
        self._positions: torch.Tensor | None = None
        #: (positions in input_ids, input_ids length) of each prompt encoded since the last run
        self._fresh_positions: list[tuple[torch.Tensor, int] | None] | None = None
        self._fg = ForegroundAccumulator()
        self._gen_match: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ref_match: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ref_feats: dict[int, ReferenceFeatures] = {}
        self._warp: WarpPlan | None = None
        self._reference: ReferenceState | None = None

    # ----------------------------------------------------------------- router (adapter side)
    def wants(self, layer: int) -> bool:
        return layer in self._wanted

    def process(self, call: AttentionCall) -> torch.Tensor:
        self.calls[(self.branch or "", self.step if self.step is not None else -1, call.layer)] += 1
        if self.branch == REFERENCE:
            return self._reference_call(call)
        return self._generation_call(call)

    def wants_text(self, layer: int) -> bool:
        """True when video->text scores of `layer` feed the foreground mask at this step."""
        plan = self.plan
        return (
            self.branch == GENERATION
            and self._pass == 0
            and self._positions is not None
            and plan is not None
            and self.step in plan.fg_steps
            and layer in plan.fg_layers
        )

    def observe_text_attention(
        self, layer: int, query_video: torch.Tensor, key_text: torch.Tensor, text_valid: torch.Tensor | None = None
    ) -> None:
        """Accumulate the subject token's share of video->text attention.

        For models whose text sits in a separate cross-attention (Wan), the adapter calls this
        from that attention; joint-attention models get it from `process`.

        :param query_video: (B, heads, N, d) video queries as the attention sees them (post-RoPE);
            the last sample of the batch is the conditional one.
        :param key_text: (B, heads, T, d) text keys.
        :param text_valid: (B, T) bool, False for padded text keys the model masks out; None: all real.
        """
        valid = None if text_valid is None else text_valid[-1]
        self._fg.add(query_video[-1], key_text[-1], self._positions, valid)

    def _generation_call(self, call: AttentionCall) -> torch.Tensor:
        plan, step, layer = self.plan, self.step, call.layer
        cond = call.query.shape[0] - 1  # CFG batches are [uncond, cond]; separate passes: cond first
        if self._pass == 0 and layer == plan.match_layer and step in plan.match_steps:
            self._gen_match = (call.query[cond, :, call.video].clone(), call.key[cond, :, call.video].clone())
        if call.text.stop > call.text.start and self.wants_text(layer):
            query = call.rope(call.query[cond : cond + 1, :, call.video])
            valid = None if call.text_valid is None else call.text_valid[cond : cond + 1]
            self.observe_text_attention(layer, query, call.key[cond : cond + 1, :, call.text], valid)
        if step in plan.warp_steps and layer in plan.warp_layers and self._warp is not None:
            self.calls[("warp", step, layer)] += 1
            return self.injector.attend(call, self._ref_feats[layer], self._warp)
        return call.default()

    def _reference_call(self, call: AttentionCall) -> torch.Tensor:
        plan, step, layer = self.plan, self.step, call.layer
        if layer == plan.match_layer and step in plan.match_steps:
            self._ref_match = (call.query[0, :, call.video].clone(), call.key[0, :, call.video].clone())
        call.rotate_(call.query, call.key)
        if step in plan.warp_steps and layer in plan.warp_layers:
            key = call.key[:, :, call.video] if self.injector.needs_reference_keys else None
            self._ref_feats[layer] = ReferenceFeatures(value=call.value[:, :, call.video], key=key)
        if layer >= self._deepest:
            raise _StopReference
        return call.attend(call.query, call.key, call.value)

    # ----------------------------------------------------------------- model hooks (core side)
    def before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.branch is not None:
            return None  # our own reference / inversion call
        scheduler = self.pipe.scheduler
        counter = getattr(scheduler, "step_index", None)  # flow-matching schedulers count their steps
        hint = counter if counter is not None else (getattr(scheduler, "begin_index", None) or 0)
        timestep = self.adapter.timestep(_as_kwargs(module, args, kwargs))
        step = step_index(timestep, getattr(scheduler, "timesteps", None), hint)
        self.step = step
        if step is None:
            self._wanted = frozenset()
            return None
        call_kwargs = _as_kwargs(module, args, kwargs)
        if self._new_run or self._last_step is None or step < self._last_step:
            self._new_run, self._pass = False, 0
            self._start_run((), call_kwargs)
        elif step == self._last_step:
            self._pass += 1  # another call in the same step: a separate CFG pass (Wan, true-CFG Hunyuan)
        else:
            self._pass = 0
        self._last_step = step
        if self._pass == 0:
            self._prepare_step(step, (), call_kwargs)
        self.branch, self.step = GENERATION, step
        self._wanted = self._generation_layers(step)
        return None

    def _generation_layers(self, step: int) -> frozenset[int]:
        """Layers whose attention the core must see in this generation call (the rest run stock)."""
        plan = self.plan
        if self._pass > 0:  # a later CFG pass: match features and text scores come from pass 0 only
            return plan.warp_layers if step in plan.warp_steps else frozenset()
        if self.adapter.text_attention_outside:  # text scores arrive through wants_text (Wan: attn2)
            return plan.reference_layers(step)  # the match and warp layers
        return plan.generation_layers(step)

    def after_forward(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self.branch == GENERATION:
            self.branch, self._wanted = None, frozenset()
        return None

    def on_set_timesteps(self) -> None:
        """The pipeline set its timesteps: the next denoising call starts a new run."""
        self._new_run = True

    def on_text_encoder(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Record where the subject token sits in each prompt the pipeline encodes."""
        if self.branch is not None or not self._subject_ids:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return None
        found = [self._find_subject(row) for row in ids.detach().cpu()]
        hit = next(((p, ids.shape[-1]) for p in found if p is not None), None)
        if self._fresh_positions is None:
            self._fresh_positions = []
        self._fresh_positions.append(hit)
        return None

    # ----------------------------------------------------------------- per run / per step
    def _start_run(self, args: tuple, kwargs: dict) -> None:
        num_steps = len(self.pipe.scheduler.timesteps)
        self.plan = StepPlan.build(self.config, num_steps, self.depth)
        self._diagnostics.clear()
        self._fg.reset()
        self._gen_match = self._ref_match = self._warp = None
        self._positions = None  # prompt_embeds passed: the text encoder did not run, positions unknown
        latents = self.adapter.latents(kwargs)
        if self._fresh_positions is not None:  # the pipeline encoded prompts since the last run
            hit = next((p for p in self._fresh_positions if p is not None), None)
            if hit is not None:  # HunyuanVideo crops its prompt template off the encoder output: shift
                positions = self.adapter.text_positions(hit[0], hit[1], kwargs)
                # on the model's device once per run: a CPU index into a CUDA tensor syncs on every use
                self._positions = positions.to(latents.device)
            self._fresh_positions = None
        if not self.plan.warp_steps:
            return
        if latents.shape[0] not in (1, 2) or (latents.shape[0] == 2 and not self._batched_cfg()):
            raise VwarperError(
                f"Expected one video per call (batch 1, or 2 with CFG), but got a batch of {latents.shape[0]}. "
                "Use num_videos_per_prompt=1 and one prompt with inject()."
            )
        if self.config.mask and self._positions is None:
            raise SubjectTokenError(
                f"Expected the prompt to contain the subject token {self.subject.token!r}, but it does not "
                "(or prompt_embeds were passed, which hide it). The foreground mask needs it. Write it in "
                f"the prompt, e.g. 'a {self.subject.token} {self.subject.class_word} on the beach', or use "
                "WarpConfig(mask=False)."
            )
        self._reference = self._reference_state(latents, kwargs)

    def _batched_cfg(self) -> bool:
        """Whether a batch of 2 is an [unconditional, conditional] pair (not two prompts)."""
        if not self.adapter.cfg_in_one_batch:
            return False  # this family runs CFG as separate passes: a batch of 2 is two prompts
        guidance = getattr(self.pipe, "_guidance_scale", None)  # set by the pipeline's __call__
        return guidance is None or float(guidance) > 1.0

    def _prepare_step(self, step: int, args: tuple, kwargs: dict) -> None:
        plan = self.plan
        self._warp = None
        self._ref_feats = {}  # last step's reference values are never read again: free them now
        if step in plan.warp_steps and self._gen_match is not None and self._ref_match is not None:
            grid = self.adapter.token_grid(self.transformer, self.adapter.latents(kwargs))
            self._warp = self._make_warp_plan(step, grid)
        if plan.warp_steps and step >= max(plan.warp_steps):
            self._gen_match = self._ref_match = None  # no later warp step matches: free the Q/K clones
        ref_layers = plan.reference_layers(step)
        if not ref_layers:
            return
        timestep = self.adapter.timestep(kwargs).reshape(-1)[:1]
        ref_kwargs = self.adapter.reference_kwargs(
            kwargs, self._reference.latents_at(step), self._reference.text, timestep
        )
        self.branch, self.step, self._wanted, self._deepest = REFERENCE, step, ref_layers, max(ref_layers)
        try:
            self.transformer(**ref_kwargs)
        except _StopReference:
            pass
        finally:
            self.branch, self._wanted = None, frozenset()

    def _make_warp_plan(self, step: int, grid: tuple[int, int, int]) -> WarpPlan:
        cfg = self.config
        (qg, kg), (qr, kr) = self._gen_match, self._ref_match
        flow, back = match_flows(
            qg, kg, qr, kr, frames=grid[0], per_frame=cfg.per_frame_matching, chunk=cfg.match_chunk
        )
        fg = cc = score = None
        if cfg.mask:
            score = self._fg.normalised()
            fg = score > cfg.tau_fg
            cc = cycle_mask(flow, back, grid, fg, cfg.tau_cc)
            mask = fg & cc
        else:
            mask = torch.ones_like(flow, dtype=torch.bool)
        # Reference tokens read by some masked generation token (no boolean indexing: no host sync).
        ref_mask = torch.zeros(mask.shape, device=mask.device).index_add_(0, flow, mask.float()) > 0
        if cfg.keep_diagnostics:
            self._diagnostics[step] = StepDiagnostics(step, grid, flow, score, fg, cc, mask)
        return WarpPlan(flow=flow, mask=mask, ref_mask=ref_mask)

    def _reference_state(self, latents: torch.Tensor, kwargs: dict) -> ReferenceState:
        pipe, adapter = self.pipe, self.adapter
        prompt = self.config.inversion_prompt or self.subject.prompt
        timesteps = pipe.scheduler.timesteps
        image = self.subject.images[0]
        conditioning = tuple(
            (name, tensor_digest(kwargs[name])) for name in adapter.batched_kwargs if torch.is_tensor(kwargs.get(name))
        )
        extra = (self.config.inversion_refine, conditioning, repr(kwargs.get("attention_kwargs")))
        key = cache_key(image, prompt, timesteps, kwargs, self.transformer, extra=extra)

        def make() -> ReferenceState:
            frames, height, width = adapter.video_shape(pipe, latents)
            previous, self.branch = self.branch, INTERNAL
            try:
                text = adapter.encode_text(pipe, prompt, kwargs)
                video = image_to_video(image, frames, height, width)
                clean = adapter.encode_video(pipe, video).to(latents.dtype)

                def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    ref = adapter.reference_kwargs(kwargs, x, text, t.to(latents.device).expand(x.shape[0]))
                    return self.transformer(**ref)[0]

                logger.info("inverting the reference over %d steps", len(timesteps))
                with pipe.progress_bar(total=len(timesteps)) as bar:
                    trajectory = invert_reference(
                        pipe.scheduler,
                        denoise,
                        clean,
                        refine=self.config.inversion_refine,
                        progress=lambda _: bar.update(),
                    )
            finally:
                self.branch = previous
            return ReferenceState(text=text, clean=clean, trajectory=trajectory)

        return self.subject.reference_cache.get_or_make(key, make)

    def _token_ids(self, token: str) -> list[int]:
        tokenizer = getattr(self.pipe, "tokenizer", None)
        if tokenizer is None:
            return []
        ids = tokenizer(token, add_special_tokens=False).input_ids
        space = tokenizer.convert_tokens_to_ids("▁")
        return [i for i in ids if i != space] or ids

    def _variants(self) -> list[list[int]]:
        """Id sequences the subject token may appear as (BPE tokenizers spell " <t>" apart from "<t>")."""
        variants = [self._subject_ids]
        tokenizer = getattr(self.pipe, "tokenizer", None)
        if tokenizer is not None:
            spaced = self._token_ids(" " + self.subject.token)
            if spaced and spaced != self._subject_ids:
                variants.append(spaced)
        return variants

    def _find_subject(self, row: torch.Tensor) -> torch.Tensor | None:
        for variant in self._subject_variants:
            ids = torch.as_tensor(variant)
            k = len(ids)
            for start in range(0, row.numel() - k + 1):
                if torch.equal(row[start : start + k], ids):
                    return torch.arange(start, start + k)
        return None

    @property
    def diagnostics(self) -> dict[int, StepDiagnostics]:
        """Per warp step flow and masks of the latest run, on CPU, on the (frames, height, width) grid."""
        for step, d in self._diagnostics.items():
            if d.flow.device.type != "cpu" or d.flow.dtype != torch.int32:
                self._diagnostics[step] = d.to_cpu()
        return self._diagnostics

    def close(self) -> None:
        """Drop every tensor this session holds (the cache on the subject stays)."""
        self._gen_match = self._ref_match = self._warp = self._reference = None
        self._ref_feats = {}
        self._fg.reset()
        self.branch, self._wanted = None, frozenset()
