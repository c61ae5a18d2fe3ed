"""Where the Wahero API key comes from: a key file is re-read when it changes."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from pydantic import SecretStr

from worker.settings import ConfigError, Settings


def fingerprint(key: str) -> str:
    """First 8 hex digits of the key's SHA-256: safe to log, enough to tell keys apart."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


class ApiKeySource:
    """The current key: WAHERO_API_KEY_FILE (preferred, re-read on change), else WAHERO_API_KEY."""

    def __init__(self, api_key: SecretStr | str | None = None, api_key_file: Path | None = None):
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        self._static = api_key
        self._file = api_key_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._cached: SecretStr | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeySource:
        """The key source the settings describe."""
        return cls(settings.api_key, settings.api_key_file)

    def get(self) -> str:
        """The key to send now; raises ConfigError naming the variable when there is none."""
        if self._file is None:
            value = self._static.get_secret_value().strip() if self._static else ""
            if not value:
                raise ConfigError(
                    "WAHERO_API_KEY is not set: set it (or WAHERO_API_KEY_FILE) to send messages"
                )
            return value
        return self._from_file(self._file).get_secret_value()

    def fingerprint(self) -> str:
        """Fingerprint of the current key."""
        return fingerprint(self.get())

    def _from_file(self, path: Path) -> SecretStr:
        try:
            stat = path.stat()
        except OSError as error:
            if self._cached is not None:
                return self._cached  # a file replaced by rename is briefly absent
            raise ConfigError(f"WAHERO_API_KEY_FILE: cannot read {path}") from error
        # mtime_ns and size together catch an in-place rewrite within one mtime tick.
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._cached is not None and stamp == self._stamp:
                return self._cached
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as error:
                if self._cached is not None:
                    return self._cached
                raise ConfigError(f"WAHERO_API_KEY_FILE: cannot read {path}") from error
            if not value:
                # A key file rewritten in place is empty for a moment: keep the last key and
                # look again next time (the stamp is not stored).
                if self._cached is not None:
                    return self._cached
                raise ConfigError(f"WAHERO_API_KEY_FILE: {path} is empty")
            self._cached, self._stamp = SecretStr(value), stamp
            return self._cached

    def __repr__(self) -> str:
        where = f"file={str(self._file)!r}" if self._file is not None else "env=WAHERO_API_KEY"
        return f"ApiKeySource({where})"

    __str__ = __repr__
