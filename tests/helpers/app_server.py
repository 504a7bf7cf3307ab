"""Serves the FiftyOne App on a dataset until killed (for the browser test).

    python tests/helpers/app_server.py DATASET PORT

Prints "ready" once the server answers. Settings (database name, plugins
directory, orchestrators) come from the environment, as for any FiftyOne
process.
"""

import sys
import time

import fiftyone as fo


def main(dataset_name, port):
    fo.launch_app(fo.load_dataset(dataset_name), remote=True, port=port, address="127.0.0.1")
    print("ready", flush=True)
    while True:  # the App server lives as long as this process
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
