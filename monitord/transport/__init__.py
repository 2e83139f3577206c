"""The stream between inference and monitoring: its entries, the contract a transport
plugin implements (``contract``), and the in-process transport (``local``)."""
