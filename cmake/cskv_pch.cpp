// Translation unit that carries the shared precompiled header (cmake/cskv_pch.h).
