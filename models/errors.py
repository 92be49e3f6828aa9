"""The one base class of seebench's user errors (imports nothing: every layer may raise them).

``harness.cli.main`` catches :class:`SeebenchError` once and prints ``harness: error: <str(err)>``
(exit 2).  A subclass per layer names where the error comes from: ``MethodError`` (method.py),
``PlanError`` (plan.py), ``LayoutError`` (layout.py), ``BackboneError`` (backbones/base.py),
``GraphError`` (cuda_graphs.py), ``ConvertError`` (convert.py), ``CheckpointError``
(tiny/model.py), and in the instrument ``HarnessError`` (harness/errors.py) and its
``HardwareError`` (harness/roofline.py).
"""


class SeebenchError(ValueError):
    """A user-facing error: ``str(err)`` is one line naming the problem and the fix."""
