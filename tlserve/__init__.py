"""tlserve: deep transfer learning, trained offline and served online."""

__version__ = "0.1.0"
