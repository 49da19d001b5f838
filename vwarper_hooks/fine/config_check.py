"""Whether a `WarpConfig` fits a model and its subjects: layers within the depth, a matcher and an injector
that are registered, several subjects or photos only with an injector that reads them, reference photos the
subjects have. The one path `inject` (through `guard.validate`) and `Session.override` take."""

from __future__ import annotations

from typing import Any

from ..config import WarpConfig
from ..contract.adapter import Adapter
from ..plugins import make_parts


def config_problems(
    adapter: Adapter, model: Any, subjects: list[Any], config: WarpConfig
) -> tuple[WarpConfig, Any, Any, list[str]]:
    """Every problem of `config` with this model and these subjects: layers, matcher and injector, several
    subjects or photos, reference photos. The one path `inject` (`validate`) and `Session.override` take.

    Returns `config` with the adapter's default layers filled in, the matcher, the injector and the problems.
    """
    depth = len(adapter.attention_layers(model))
    config = config.for_adapter(adapter, depth)  # other families may default to other layers
    matcher, injector, part_problems = make_parts(config)
    problems = config.layer_problems(depth) + part_problems + several_problems(subjects, config)
    for subject in subjects:
        problems += reference_problems(subject, config, matcher)
    return config, matcher, injector, problems


def several_problems(subjects: list[Any], config: WarpConfig) -> list[str]:
    """Several subjects, or several photos per subject: distinct tokens, and an injector that reads a union."""
    if not subjects:
        return ["Expected at least one vwarper.Subject, but got none. Pass a Subject or a list of them."]
    tokens = [getattr(s, "token", None) for s in subjects]
    problems = []
    repeated = sorted({t for t in tokens if t is not None and tokens.count(t) > 1})
    if repeated:
        problems.append(f"Expected a different token per subject, but got {repeated} more than once. "
                        "Train (or rename) the subjects with distinct tokens.")
    union = len(subjects) > 1 or config.num_references != 1
    if union and config.injector != "value_warp" and config.warp:
        problems.append(f"Expected injector='value_warp' with several subjects or reference photos, but got "
                        f"{config.injector!r}: the B.2 baselines read one reference. Use one subject and photo.")
    return problems


def reference_problems(subject: Any, config: WarpConfig, matcher: Any) -> list[str]:
    """Whether `config.reference_image` names a photo the subject has, and "best" a matcher that scores."""
    choice, images = config.reference_image, getattr(subject, "images", None) or []
    if choice == "best":
        if matcher is not None and not callable(getattr(matcher, "score", None)):
            return [f"Expected a matcher with a score() for reference_image='best', but {config.matcher!r} has none. "
                    "Pass a photo index instead."]
        return []
    count, wanted = len(images), config.num_references
    if not count:
        return []
    if choice >= count:
        return [f"Expected reference_image below {count} (the subject has {count} photos), but got "
                f"{choice}. Pass an index from 0 to {count - 1}, or 'best'."]
    if wanted is not None and choice + min(wanted, count) > count:  # None: every photo, whatever the index
        return [f"Expected at most {count - choice} photos from reference_image={choice} on (the subject has "
                f"{count}), but got num_references={wanted}. Pass num_references={count - choice} or a lower "
                "reference_image."]
    return []
