"""One module per `gaussmem` subcommand; each exposes `register(subparsers)`."""
