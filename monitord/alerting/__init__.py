"""Alerts from the daemon: the per-detector episode state machine and the sink contract.

``alert``: the alert record, its fingerprint and its Alertmanager-compatible JSON.
``episodes``: one state machine per detector instance (firing, re-notify, resolve).
``dispatcher``: feeds the state machines from the detector stage, ticks them, persists the
open episodes across restarts and hands notifications to the sinks.
``sinks``: what a sink plugin implements (``register_sinks``).
``spool`` and ``delivery``: the on-disk spool and the retrying HTTP delivery the webhook
and alertmanager sinks share.
"""
