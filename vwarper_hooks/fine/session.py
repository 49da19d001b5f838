"""The injection session: sequences the paper's steps around every transformer call.

Per generation call of the denoising loop the session asks the step clock (`steps`) which step
this is; at a run's first call it starts a `RunState` (plan, subject token, reference branch);
at each step's first call it has the token map made (`token_map`: matching and masks) and the
reference branch run (`reference`); then it routes the generation forward (`capture`) and keeps the
diagnostics. It owns no arithmetic of its own.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..config import WarpConfig
from ..contract.adapter import Adapter, base_model
from ..contract.experts import experts
from ..contract.parts import Injector, Matcher
from ..contract.plan import StepPlan
from ..contract.sharding import TokenShards, score_gather
from ..errors import ConfigError, VwarperError
from ..files import weights_digest
from ..model_hooks import memory_hooks
from .capture import Branch, Route, Router, RunState, SubjectRun
from .config_check import config_problems
from .diagnostics import DiagnosticsLog, StepDiagnostics
from .foreground import ForegroundAccumulator
from .lockstep import Lockstep
from .lockstep_gate import enter_layer, runs_in_lockstep
from .reference import ReferenceBranch
from .run_checks import check_models, check_run, warn_if_not_finite
from .steps import StepClock
from .token_map import map_tokens, side_by_side
from .tokens import SubjectTokens

logger = logging.getLogger(__name__)
_UNSET = object()


def bind_kwargs(module: Any, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments as keywords (the pipelines pass keywords; tolerate positionals)."""
    if not args:
        return kwargs
    return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)


@dataclass
class SubjectBranch:
    """One subject of the session: its token finder and its reference branch."""

    subject: Any
    tokens: SubjectTokens
    reference: ReferenceBranch
    positions: slice | None = None  # where its token sat in the latest run's text tokens


class Session:
    """State of one `inject` block. `diagnostics` maps warp step -> `StepDiagnostics` (with several
    subjects: step -> {token: StepDiagnostics}).

    `config` is the one `inject.validate` returns, with the adapter's default layers filled in;
    `override` changes it for the pipeline calls inside a ``with`` block.
    """

    def __init__(
        self, pipe: Any, adapter: Adapter, subjects: list[Any], config: WarpConfig, matcher: Matcher,
        injector: Injector,
    ) -> None:
        self.pipe, self.adapter, self.subjects = pipe, adapter, list(subjects)
        self.config, self.matcher, self.injector = config, matcher, injector
        models = [base_model(m) for m in experts(adapter, pipe)]  # Wan 2.2: both experts
        self.depth = len(adapter.attention_layers(models[0]))
        # The inversion cache's key digests the weights (a host read when they changed): at inject, with the
        # subjects' LoRA in, and before each run's loop, never inside it (the closure holds no session).
        [weights_digest(m) for m in models]
        self.clock = StepClock(pipe.scheduler, before_run=lambda: [weights_digest(m) for m in models])
        self.router = Router()
        self.lockstep = Lockstep()  # the reference workers beside the running generation forward, if any
        self.router.on_enter = functools.partial(enter_layer, self.lockstep, self.router)
        tokenizer = getattr(pipe, "tokenizer", None)
        self.branches = [
            SubjectBranch(s, SubjectTokens(tokenizer, s.token), ReferenceBranch(pipe, adapter, s, self.router,
                                                                                self.clock, i))
            for i, s in enumerate(self.subjects)
        ]
        self._diagnostics = DiagnosticsLog([s.token for s in self.subjects])
        self._preparing = False
        self._last: tuple[int, int] | None = None  # (run, step) of the latest generation call
        self._pass = 0  # index of that call within its step (CFG as separate calls)
        self._warned: set[str] = set()
        #: the (first) subject's reference photo in the latest run, and with "best" every photo's score
        self.reference_image: int | None = None
        self.reference_scores: list[float] | None = None
        self._memory_hooks: list[str] = []  # offload / casting hooks on the model: no lockstep (model_hooks)
        self.closed = False  # set when the inject() block ends

    @property
    def subject(self) -> Any:
        return self.subjects[0]  # the (first) subject

    @property
    def photos(self) -> dict[str, list[int]]:
        """Subject token -> the reference photos (indices into its images) the latest run read, in the
        order of their tokens in the flows."""
        return {branch.subject.token: list(branch.reference.photos) for branch in self.branches}

    @property
    def subject_positions(self) -> slice | None:
        """Where the (first) subject's token sat in the latest run's text tokens (None: not found)."""
        return self.branches[0].positions

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
        calls started inside the block; validated by `inject`'s own checks (`config_check.config_problems`), restored
        on exit (also on error). Refused on a closed session.

        Example: ``with vwarper.inject(pipe, subject) as s, s.override(warp_steps=(5, 15)): pipe(...)``
        """
        if self.closed:
            raise VwarperError(
                "Expected override() inside its inject() block, but that block has ended (the session is closed). "
                "Call it within the with block, or open a new inject()."
            )
        model = base_model(self.pipe.transformer)
        config, matcher, injector, problems = config_problems(self.adapter, model, self.subjects,
                                                              self.config.updated(**fields))
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
            for branch in self.branches:
                branch.tokens.observe(text, input_ids)

    def prepare_call(self, **call_kwargs: Any) -> None:
        """Run ``pipe(**call_kwargs)`` for its first denoising step only: at that step's first transformer
        call the reference branch's inversion (and, with ``cache_reference_features``, every step's
        features) is computed and cached; the step itself runs stock, and the pipeline's own interrupt
        flag (``pipe._interrupt``, which diffusers' pipelines check before each step and reset at each
        call) skips the rest. A pipeline without that flag runs its remaining steps stock."""
        self._preparing, before = True, self.pipe.__dict__.get("_interrupt", _UNSET)
        try:
            self.pipe(**call_kwargs)
        finally:  # the flag as it was (a pipeline that does not reset it is not left interrupted)
            self._preparing = False
            if before is _UNSET:
                self.pipe.__dict__.pop("_interrupt", None)
            else:
                self.pipe._interrupt = before

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
        if self._preparing:
            self.pipe._interrupt = True  # the reference branch is ready: this step runs stock, no later one
            return
        if pass_index == 0:
            self._prepare_step(step, kwargs)
        plan = self.router.run.plan
        layers = plan.generation_layers(step, pass_index, self.adapter.text_attention_outside)
        self.router.route = Route(Branch.GENERATION, step, pass_index, layers)

    def after_forward(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self.router.route.branch is Branch.GENERATION:
            if self._last is not None and self._last[1] == self.clock.num_steps - 1:
                warn_if_not_finite(output)
            self.router.route = Route()
            if self.lockstep.active:  # the workers ended at their deepest layer; drop what is left
                self.lockstep.close()
                self.router.run.warp_values = {}

    # ----------------------------------------------------------------- per run / per step
    def _start_run(self, kwargs: dict) -> None:
        config = self.config
        models = [base_model(m) for m in experts(self.adapter, self.pipe)]
        check_models(models, self.adapter)  # again at each run: a cache may be new
        self._memory_hooks = [h for m in models for h in memory_hooks(m)]
        if self._memory_hooks and config.reference_lockstep:
            self._warn_once(
                f"reference_lockstep off for this run: {', '.join(self._memory_hooks)} on the transformer would "
                "offload or cast a block's weights while the paused reference branch is inside it; the reference "
                "runs before the generation instead (same output, all warp layers' reference values held)",
                level=logging.INFO,
            )
        plan = StepPlan.build(config, self.clock.num_steps, self.depth)
        self._warn_once(plan.clipped)
        for branch in self.branches:
            found = branch.tokens.in_prompt()
            # HunyuanVideo crops its prompt template off the encoder output: the adapter shifts positions
            branch.positions = None if found is None else self.adapter.text_positions(found[0], found[1], kwargs)
        shards = TokenShards.of_model(models[0]) if self.adapter.context_parallel else None
        gather = score_gather(shards, self.adapter.text_attention_outside)  # context parallelism: every rank's
        subjects = [SubjectRun(branch.positions, ForegroundAccumulator(gather)) for branch in self.branches]
        self.router.run = RunState(config, plan, self.matcher, self.injector, subjects)
        self._diagnostics.clear()
        self._pass, self.reference_scores = 0, None
        if plan.warp_steps:
            latents = self.adapter.latents(kwargs)
            check_run(self.pipe, self.adapter, self.config, self.branches, latents, shards)
            for branch in self.branches:
                branch.reference.prepare(kwargs, latents)
            self.reference_image = self.branches[0].reference.image
        for branch in self.branches:
            branch.tokens.new_run()

    def _prepare_step(self, step: int, kwargs: dict) -> None:
        run = self.router.run
        plan = run.plan
        run.warp, run.warp_values = None, {}
        for subject in run.subjects:
            subject.ref_values = {}  # last step's reference values are never read again: free them now
        if step in plan.warp_steps and run.gen_match is not None and all(s.ref_match for s in run.subjects):
            grid = self.adapter.token_grid(self.pipe.transformer, self.adapter.latents(kwargs))
            self._choose_photos(step, kwargs, grid)
            run.warp, diagnostics = map_tokens(run, step, grid)
            run.gen_match = None  # step t-1's features are used up; step t's are captured in this forward
            if run.config.keep_diagnostics:
                for branch, record in zip(self.branches, diagnostics, strict=True):
                    self._diagnostics.record(branch.subject.token, record)
        if plan.warp_steps and step >= max(plan.warp_steps):
            run.gen_match = None  # no later warp step matches: free the features
            for subject in run.subjects:
                subject.ref_match = []
        self.lockstep.close()  # what an interrupted forward left
        layers = plan.reference_layers(step)
        lockstep = self.lockstep if runs_in_lockstep(run, self.adapter, self._memory_hooks, layers) else None
        if layers:
            for branch in self.branches:
                branch.reference.run(step, kwargs, layers, lockstep)
        if run.warp is not None and lockstep is None:
            run.warp_values = {layer: side_by_side(run, layer) for layer in plan.warp_layers}

    def _choose_photos(self, step: int, kwargs: dict, grid: tuple[int, int, int]) -> None:
        """With ``reference_image="best"``, at the first warp step: each subject keeps its best photo."""
        if self.router.run.config.reference_image != "best" or self.reference_scores is not None:
            return
        scores = [branch.reference.choose_best(step - 1, kwargs, grid) for branch in self.branches]
        self.reference_scores, self.reference_image = scores[0], self.branches[0].reference.image

    def _prepare_reference(self, kwargs: dict) -> None:
        run = self.router.run
        if run.config.cache_reference_features and run.plan.warp_steps:
            for step in range(self.clock.num_steps):
                layers = run.plan.reference_layers(step)
                for branch in self.branches if layers else []:
                    branch.reference.run(step, kwargs, layers)

    def _warn_once(self, message: str | None, level: int = logging.WARNING) -> None:
        if message and message not in self._warned:
            self._warned.add(message)
            logger.log(level, message)

    def close(self) -> None:
        """Drop every tensor this session holds (the cache on the subject stays) and end the worker threads."""
        self.closed = True
        self.lockstep.shutdown()
        self.router.run = None
        self.router.route = Route()
        self.router.release()
        self.router.on_enter = None  # holds the router itself: the cycle would outlive the block
        for branch in self.branches:
            branch.reference.close()
