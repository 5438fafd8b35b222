"""`python -m billow.conformance --url URL`: the same as `billow conformance`."""

import argparse
import sys

from billow.conformance import add_arguments, run

parser = argparse.ArgumentParser(prog="billow conformance", description=__doc__)
add_arguments(parser)
sys.exit(run(parser.parse_args()))
