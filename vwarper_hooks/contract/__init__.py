"""The extension contract in one place: what an adapter, a matcher or an injector written outside this
package implements, what it receives, and the hooks that register it.

- `calls`: `AttentionCall` (one routed attention) and `LayerRouter` (what a processor asks; no-op defaults)
- `parts`: `Matcher` + `MatchResult`, `Injector` + `ReferenceFeatures` + `TokenMap`
- `plan`: `StepPlan`, the layers each branch needs at each step
- `hookspecs`: ``register_adapters``, ``register_matchers``, ``register_injectors`` (and `hookimpl`)
- `adapter`: the `Adapter` base class itself; `experts`: which transformer of a two-expert pipeline runs
- `processors`: `RoutedProcessor`, the base of an adapter's attention processors

The contract imports nothing of the method (`fine/`), the subjects or the apps: they import it.
"""

from .adapter import Adapter, LayerDefaults, proportional_layers
from .calls import AttentionCall, LayerRouter
from .hookspecs import hookimpl
from .parts import Injector, Matcher, MatchResult, ReferenceFeatures, TokenMap, as_match_result
from .plan import StepPlan

__all__ = [
    "Adapter",
    "AttentionCall",
    "Injector",
    "LayerDefaults",
    "LayerRouter",
    "MatchResult",
    "Matcher",
    "ReferenceFeatures",
    "StepPlan",
    "TokenMap",
    "as_match_result",
    "hookimpl",
    "proportional_layers",
]
