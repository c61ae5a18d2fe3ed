"""wahero-bulk: queue-driven bulk WhatsApp sending through the Wahero API."""

__version__ = "0.1.0"
