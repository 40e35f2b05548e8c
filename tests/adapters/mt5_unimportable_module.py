"""A stand-in ``MetaTrader5`` that is installed but fails at import, as a broken DLL does."""

raise ImportError("DLL load failed while importing _core: the specified module could not be found")
