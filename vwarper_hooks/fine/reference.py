"""The reference branch (paper 4.2): the reference image, repeated over time, inverted in step with
the generation, and run through the transformer where its features are needed.

`ReferenceBranch.prepare` builds the branch's state once per pipeline call: the subject prompt's
text conditioning, the image's VAE latent, and its inversion over the pipeline's own timesteps
(`trajectory[i]` is the reference latent at ``timesteps[i]``). The state is a pure function of
subject, image, size, timesteps and model, so it is cached on the `Subject` (see
`reference_cache`). `ReferenceBranch.run` then runs one reference forward at a step, through the
layers the plan needs and no further.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..contract.adapter import Adapter, base_model
from ..contract.experts import expert_for, experts
from ..files import tensor_digest
from ..images import image_to_video
from .capture import Branch, Route, Router, StopReference
from .encode import encode_reference
from .feature_cache import FeatureCache
from .inversion import invert_reference
from .lockstep import Lockstep
from .matching import first_best
from .reference_cache import ReferenceState, cache_key, model_fingerprint, reference_cache
from .steps import StepClock

logger = logging.getLogger(__name__)


class ReferenceBranch:
    """The reference branch of one subject: its photos (one, or ``num_references`` of them batched)."""

    def __init__(
        self, pipe: Any, adapter: Adapter, subject: Any, router: Router, clock: StepClock, index: int = 0
    ) -> None:
        self.pipe, self.adapter, self.subject, self.router, self.clock = pipe, adapter, subject, router, clock
        self.index = index  # which of the session's subjects (`Route.subject`)
        self.states: dict[int, ReferenceState] = {}  # reference photo index -> its state this run
        self.photos: list[int] = [0]  # the photos the branch runs with, in batch order
        self._features: FeatureCache | None = None  # the photos' cached features (opt-in)
        self._steps: list[int] = []  # this run's steps with a reference forward, in order

    @property
    def image(self) -> int:
        """The (first) photo the branch runs with."""
        return self.photos[0]

    def photo_choice(self) -> list[int]:
        """The photos this run prepares: `num_references` of them (None: all), else `reference_image`
        (``"best"``: all, until `choose_best` keeps one)."""
        config, count = self.router.run.config, len(self.subject.images)
        if config.reference_image == "best":
            return list(range(count))
        if config.num_references is None:
            return list(range(count))
        return list(range(config.reference_image, config.reference_image + min(config.num_references, count)))

    def prepare(self, kwargs: dict, latents: torch.Tensor) -> None:
        """This run's state(s): from the subject's cache, or made now (text, latent, inversion).

        With ``reference_image="best"`` every photo is prepared (each inverted once, then cached) and
        the branch runs with photo 0 until `choose_best` picks one.
        """
        config = self.router.run.config
        chosen = self.photo_choice()
        cache = reference_cache(self.subject)
        cache.max_entries = max(cache.max_entries, len(chosen))  # every photo of a run stays cached
        self.states = {i: self._state(i, kwargs, latents) for i in chosen}
        self.photos = [chosen[0]] if config.reference_image == "best" else chosen
        plan = self.router.run.plan
        self._steps = [s for s in range(self.clock.num_steps) if plan.reference_layers(s)]
        self._features = None
        if config.cache_reference_features:
            self._features = FeatureCache(self.states, latents.device, config.feature_cache_device_gib)

    def _state(self, index: int, kwargs: dict, latents: torch.Tensor) -> ReferenceState:
        config = self.router.run.config
        prompt = config.inversion_prompt or self.subject.prompt
        image = self.subject.images[index]
        key = cache_key(image, prompt, self.clock.host_timesteps(), kwargs, base_model(self.pipe.transformer),
                        extra=self._key_extra(kwargs, config.inversion_refine))
        first = min(s for s in range(self.clock.num_steps) if self.router.run.plan.reference_layers(s))
        return reference_cache(self.subject).get_or_make(
            key, lambda: self._make(kwargs, latents, prompt, image, config.inversion_refine, first), first
        )

    def choose_best(self, step: int, kwargs: dict, grid: tuple[int, int, int]) -> list[float]:
        """Pick the photo whose match-layer features at `step` best match the generation's (the mean of
        the symmetric map's row maxima; the lower index on a tie, `matching.first_best`); returns every
        photo's score. One host read, once per run."""
        run = self.router.run
        mine = run.subjects[self.index]
        scores, matches = [], []
        for index in sorted(self.states):
            self.photos = [index]
            self.run(step, kwargs, frozenset({run.plan.match_layer}))
            matches.append(mine.ref_match)
            scores.append(run.matcher.score(run.gen_match, mine.ref_match[0], grid))
        values = torch.stack(scores).float().cpu().tolist()
        self.photos = [int(first_best(torch.tensor(values)))]  # a tie within TIE_RTOL: the lower index
        mine.ref_match = matches[self.image]
        logger.info("reference photo %d of %d chosen (match scores %s)", self.image, len(values),
                    ", ".join(f"{v:.4f}" for v in values))
        return values

    def _key_extra(self, kwargs: dict, refine: int) -> tuple:
        """What else the state depends on: the refinement count, per-sample conditioning values
        (e.g. HunyuanVideo's guidance: one host read per run; meta tensors have no values) and the
        attention kwargs."""
        conditioning = tuple(
            (name, "meta" if kwargs[name].is_meta else tensor_digest(kwargs[name]))
            for name in self.adapter.batched_kwargs
            if torch.is_tensor(kwargs.get(name))
        )
        others = tuple(model_fingerprint(base_model(m)) for m in experts(self.adapter, self.pipe)[1:])  # Wan 2.2
        return refine, conditioning, repr(kwargs.get("attention_kwargs")), others

    def _make(
        self, kwargs: dict, latents: torch.Tensor, prompt: str, image: Any, refine: int, first: int
    ) -> ReferenceState:
        """Text, clean latent and the inversion up to step `first`, the noisiest step the run reads."""
        pipe, adapter = self.pipe, self.adapter
        frames, height, width = adapter.video_shape(pipe, latents)
        with self.router.routing(Route(branch=Branch.INTERNAL)):
            text = adapter.encode_text(pipe, prompt, kwargs)
            video = image_to_video(image, frames, height, width)
            clean = encode_reference(adapter, pipe, video, latents)  # untiled if tiles change its size

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # t: the host scheduler's (no read)
                ref = adapter.reference_kwargs(kwargs, x, text, t.to(latents.device).expand(x.shape[0]))
                expert = expert_for(adapter, pipe, float(t))  # the expert the pipeline runs at t (Wan 2.2)
                return adapter.model_output(expert(**ref)[0], ref)  # in the latents' layout

            scheduler = self.clock.host_scheduler()
            steps = len(scheduler.timesteps) - first
            logger.info("inverting the reference over %d steps", steps)
            with pipe.progress_bar(total=steps) as bar:
                trajectory = invert_reference(
                    scheduler, denoise, clean, refine=refine, progress=lambda _: bar.update(), first=first
                )
        return ReferenceState(text=text, clean=clean, trajectory=trajectory, first=first)

    def run(self, step: int, kwargs: dict, layers: frozenset[int], lockstep: Lockstep | None = None) -> None:
        """One reference forward at `step` through the deepest of `layers`, all photos batched (the
        router captures), or with ``cache_reference_features`` their features from the cache. With a
        `lockstep`, the forward runs up to its first warp layer now and on beside the generation."""
        cache, run = self._features, self.router.run
        if cache is not None and cache.complete(run, self.index, self.photos, step):
            later = [s for s in self._steps if s > step]
            cache.load(run, self.index, self.photos, step, later[0] if later else None)
            return
        ref_kwargs, route = self._inputs(step, kwargs, layers)
        expert = expert_for(self.adapter, self.pipe, float(self.clock.host_timesteps()[step]))  # as the generation
        if lockstep is not None:
            lockstep.start(lambda: self._call(expert, ref_kwargs), lambda: self.router.routing(route),
                           layers & run.plan.warp_layers, name=f"vwarper-reference-{self.index}")
            return
        with self.router.routing(route):
            self._call(expert, ref_kwargs)
        if cache is not None:
            cache.store(run, self.index, self.photos, step)

    def _inputs(self, step: int, kwargs: dict, layers: frozenset[int]) -> tuple[dict, Route]:
        # this step's own timestep, from the scheduler's device copy (the call's may be another step's)
        timestep = self.pipe.scheduler.timesteps[step : step + 1]
        states = [self.states[i] for i in self.photos]
        latents = torch.cat([state.latents_at(step) for state in states])  # (k, ...): one sample per photo
        ref_kwargs = self.adapter.reference_kwargs(kwargs, latents, states[0].text, timestep)
        return ref_kwargs, Route(branch=Branch.REFERENCE, step=step, layers=layers, deepest=max(layers),
                                 subject=self.index)

    def _call(self, expert: Any, ref_kwargs: dict) -> None:
        try:
            expert(**ref_kwargs)
        except StopReference:
            pass

    def close(self) -> None:
        self.states, self._features = {}, None
