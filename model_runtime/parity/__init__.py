"""Parity mode: canonical requests, per-stage traces, comparisons that name the first divergent stage.

QA's question — "did the phone compute what the server computes, and if not, where did it start to
differ?" — is answered by comparing two :class:`~model_runtime.parity.trace.ParityTrace` documents of
the same canonical request, stage by stage, on the very graphs the phone runs.
"""
