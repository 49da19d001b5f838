"""The injection session: sequences the paper's steps around every transformer call.

Per generation call of the denoising loop the session asks the step clock (`steps`) which step
this is; at a run's first call it starts a `RunState` (plan, subject token, reference branch);
at each step's first call it has the warp plan made (`warp_plan`: matching and masks) and the
reference branch run (`reference`); then it routes the generation forward (`capture`) and keeps
the diagnostics. It owns no arithmetic of its own.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..adapter import Adapter, base_model
from ..config import WarpConfig
from ..errors import ConfigError, SubjectTokenError, VwarperError
from ..plugins import make_parts
from .capture import Branch, Route, Router, RunState
from .diagnostics import DiagnosticsLog, StepDiagnostics
from .matching import Matcher
from .plan import StepPlan
from .reference import ReferenceBranch
from .steps import StepClock
from .tokens import SubjectTokens
from .warp_plan import plan_warp
from .warping import Injector

logger = logging.getLogger(__name__)


class Prepared(Exception):
    """Ends a `Session.prepare_call` pipeline call once the reference branch is ready."""


def bind_kwargs(module: Any, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments as keywords (the pipelines pass keywords; tolerate positionals)."""
    if not args:
        return kwargs
    return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)


class Session:
    """State of one `inject` block. `diagnostics` maps warp step -> `StepDiagnostics`.

    `config` is the one `inject.validate` returns, with the adapter's default layers filled in;
    `override` changes it for the pipeline calls inside a ``with`` block.
    """

    def __init__(
        self, pipe: Any, adapter: Adapter, subject: Any, config: WarpConfig, matcher: Matcher, injector: Injector
    ) -> None:
        self.pipe, self.adapter, self.subject = pipe, adapter, subject
        self.depth = len(adapter.attention_layers(base_model(pipe.transformer)))
        self.config, self.matcher, self.injector = config, matcher, injector
        self.clock = StepClock(pipe.scheduler)
        self.router = Router()
        self.reference = ReferenceBranch(pipe, adapter, subject, self.router, self.clock)
        self.tokens = SubjectTokens(getattr(pipe, "tokenizer", None), subject.token)
        self._diagnostics = DiagnosticsLog()
        self._preparing = False
        self._last: tuple[int, int] | None = None  # (run, step) of the latest generation call
        self._pass = 0  # index of that call within its step (CFG as separate calls)
        self._warned: set[str] = set()
        #: where the subject token sat in the latest run's text tokens (None: not found)
        self.subject_positions: slice | None = None
        #: the reference photo the latest run used, and with reference_image="best" every photo's score
        self.reference_image: int | None = None
        self.reference_scores: list[float] | None = None

    @property
    def diagnostics(self) -> dict[int, StepDiagnostics]:
        """Per warp step flow and masks of the latest run, on CPU, on the (frames, height, width) grid."""
        return self._diagnostics.read()

    @property
    def calls(self) -> Counter[tuple[str, int, int]]:
        """(branch, step, layer) -> routed attention calls; ("warp", step, layer) counts injections."""
        return self.router.calls

    @contextmanager
    def override(self, **fields: Any) -> Iterator[Session]:
        """Change `WarpConfig` fields (step and layer ranges, thresholds, matcher, ...) for the pipeline
        calls started inside the block; validated like `inject`, restored on exit (also on error).

        Example: ``with vwarper.inject(pipe, subject) as s, s.override(warp_steps=(5, 15)): pipe(...)``
        """
        config = self.config.updated(**fields)
        matcher, injector, part_problems = make_parts(config)
        problems = config.layer_problems(self.depth) + part_problems
        if problems:
            raise ConfigError(problems)
        previous = self.config, self.matcher, self.injector
        self.config, self.matcher, self.injector = config, matcher, injector
        try:
            yield self
        finally:
            self.config, self.matcher, self.injector = previous

    def on_tokenized(self, text: Any, input_ids: Any) -> None:
        """Tokenizer spy callback: record the pipeline's own prompts (not our inversion prompt)."""
        if self.router.route.branch is None:
            self.tokens.observe(text, input_ids)

    def prepare_call(self, **call_kwargs: Any) -> None:
        """Run ``pipe(**call_kwargs)`` only until its first denoising call: the reference branch's
        inversion (and, with ``cache_reference_features``, every step's features) is computed and
        cached on the subject, then the call ends without denoising."""
        self._preparing = True
        try:
            self.pipe(**call_kwargs)
        except Prepared:
            pass
        finally:
            self._preparing = False

    # ----------------------------------------------------------------- model hooks
    def before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Transformer pre-hook: prepare the step, then route this generation call."""
        if self.router.route.branch is not None:
            return  # our own reference or inversion forward
        step = self.clock.current()
        if step is None:
            return  # a call outside the denoising loop: stock
        kwargs = bind_kwargs(module, args, kwargs)
        where = (self.clock.run, step)
        if self._last is None or where[0] != self._last[0]:
            self._start_run(kwargs)
            if self._preparing:
                self._prepare_reference(kwargs)
        pass_index = self._pass + 1 if where == self._last else 0
        self._last, self._pass = where, pass_index
        if pass_index == 0:
            self._prepare_step(step, kwargs)
        plan = self.router.run.plan
        layers = plan.generation_layers(step, pass_index, self.adapter.text_attention_outside)
        self.router.route = Route(Branch.GENERATION, step, pass_index, layers)

    def after_forward(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self.router.route.branch is Branch.GENERATION:
            self.router.route = Route()

    # ----------------------------------------------------------------- per run / per step
    def _start_run(self, kwargs: dict) -> None:
        config = self.config
        plan = StepPlan.build(config, self.clock.num_steps, self.depth)
        self._warn_once(plan.clipped)
        found = self.tokens.in_prompt()
        negative_only = found is None and self.tokens.elsewhere()  # read before new_run() forgets the texts
        # HunyuanVideo crops its prompt template off the encoder output: the adapter shifts positions
        subject = None if found is None else self.adapter.text_positions(found[0], found[1], kwargs)
        self.router.run = RunState(config, plan, self.matcher, self.injector, subject)
        self.subject_positions = subject
        self._diagnostics.clear()
        self._pass = 0
        self.reference_scores = None
        self.tokens.new_run()
        if plan.warp_steps:
            latents = self.adapter.latents(kwargs)
            self._check_run(latents.shape[0], found is not None, negative_only)
            self.reference.prepare(kwargs, latents)
            self.reference_image = self.reference.image

    def _check_run(self, batch: int, token_found: bool, negative_only: bool = False) -> None:
        if batch not in (1, 2) or (batch == 2 and not self._batched_cfg()):
            raise VwarperError(
                f"Expected one video per call (batch 1, or 2 with CFG), but got a batch of {batch}. "
                "Use num_videos_per_prompt=1 and one prompt with inject()."
            )
        if self.config.mask and not token_found:
            where = "only in the negative prompt" if negative_only else "not in the prompt"
            raise SubjectTokenError(
                f"Expected the prompt to contain the subject token {self.subject.token!r}, but it is {where} "
                "(or prompt_embeds were passed, which hide it). The foreground mask needs it. Write it in "
                f"the prompt, e.g. 'a {self.subject.token} {self.subject.class_word} on the beach', or use "
                "WarpConfig(mask=False)."
            )

    def _batched_cfg(self) -> bool:
        """Whether a batch of 2 is an [unconditional, conditional] pair (not two prompts)."""
        if not self.adapter.cfg_in_one_batch:
            return False  # this family runs CFG as separate passes: a batch of 2 is two prompts
        guidance = getattr(self.pipe, "_guidance_scale", None)  # set by the pipeline's __call__
        return guidance is None or float(guidance) > 1.0

    def _prepare_step(self, step: int, kwargs: dict) -> None:
        run = self.router.run
        plan = run.plan
        run.warp = None
        run.ref_values = {}  # last step's reference values are never read again: free them now
        if step in plan.warp_steps and run.gen_match is not None and run.ref_match is not None:
            grid = self.adapter.token_grid(self.pipe.transformer, self.adapter.latents(kwargs))
            if run.config.reference_image == "best" and self.reference_scores is None:
                self.reference_scores = self.reference.choose_best(step - 1, kwargs, grid)
                self.reference_image = self.reference.image
            run.warp, diagnostics = plan_warp(run, step, grid)
            if run.config.keep_diagnostics:
                self._diagnostics.record(diagnostics)
        if plan.warp_steps and step >= max(plan.warp_steps):
            run.gen_match = run.ref_match = None  # no later warp step matches: free the features
        layers = plan.reference_layers(step)
        if layers:
            self.reference.run(step, kwargs, layers)

    def _prepare_reference(self, kwargs: dict) -> None:
        run = self.router.run
        if run.config.cache_reference_features and self.reference.states:
            for step in range(self.clock.num_steps):
                layers = run.plan.reference_layers(step)
                if layers:
                    self.reference.run(step, kwargs, layers)
        raise Prepared

    def _warn_once(self, message: str | None) -> None:
        if message and message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    def close(self) -> None:
        """Drop every tensor this session holds (the cache on the subject stays)."""
        self.router.run = None
        self.router.route = Route()
        self.router.release()
        self.reference.close()
