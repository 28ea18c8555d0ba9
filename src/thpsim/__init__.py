"""thpsim: an executable, byte-exact model of Linux anonymous-THP page-table management."""

__version__ = "0.1.0"
