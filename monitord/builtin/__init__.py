"""Plugins that ship with the core, registered through the same hooks as any other."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "monitord.builtin.folder_source",
    "monitord.builtin.http_source",
    "monitord.builtin.log_sink",
    "monitord.builtin.webhook_sink",
    "monitord.builtin.alertmanager_sink",
    "monitord.builtin.local_transport",
    "monitord.builtin.commands",
)
