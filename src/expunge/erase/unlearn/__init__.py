"""Unlearning objectives (METHODS §5), one file each, and the ``unlearn`` eraser that runs them.

Every objective is a callable ``(model, batches, ctx) -> (loss, logs)`` over the named streams
``forget`` and (when it uses one) ``retain``; the one training loop optimizes it. Registered in
``expunge.registry.OBJECTIVES`` as ``ga``, ``graddiff``, ``npo`` and ``rmu``.
"""
