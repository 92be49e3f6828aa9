"""FLOPs, counted and modelled (docs/flops.md).

``model``: units, conventions, the per-layer work of each token class and the schedule a plan
gives (``schedule``, ``plan_schedule``), evaluated by ``analyze``.  ``counted``: fvcore's count of
what the executor really ran, and the one prefill pipeline (``analytic_prefill``) FLOPs cells and
latency records share.  ``paper``: the papers' closed forms and the published table.
``crosscheck``: the dense HF models counted under ``FakeTensorMode``.
"""
