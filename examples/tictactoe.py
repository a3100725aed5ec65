"""The FastAPI seed's Swagger example: 9 board cells (0 empty, 1 X, 2 O) -> a one-hot next move.

The seed trained a 9-9-9 sigmoid network on these ten pairs with mean squared error. Here the same
data trains a softmax classifier through a buffered job, and every pair is then predicted.

    python examples/tictactoe.py [--url http://127.0.0.1:8000]
"""
import numpy as np

from _common import Client, fresh_model, parse_args, plot_history, report

BOARDS = [  # (cells, next move index), the ten examples of the seed's /output and /train docs
    ([0, 0, 0, 0, 0, 0, 0, 0, 0], 4), ([0, 0, 0, 0, 2, 0, 0, 0, 0], 0), ([1, 0, 0, 0, 2, 0, 0, 0, 0], 1),
    ([1, 2, 0, 0, 2, 0, 0, 0, 0], 7), ([1, 2, 0, 0, 2, 0, 0, 1, 0], 2), ([1, 2, 2, 0, 2, 0, 0, 1, 0], 6),
    ([1, 2, 2, 0, 2, 0, 1, 1, 0], 8), ([1, 2, 2, 0, 2, 0, 1, 1, 2], 3), ([1, 2, 2, 1, 2, 0, 1, 1, 2], 5),
    ([1, 2, 2, 1, 2, 2, 1, 1, 2], 5),
]

args = parse_args(__doc__, epochs=300)
x = np.array([cells for cells, _ in BOARDS], dtype=float)
targets = np.eye(9)[[move for _, move in BOARDS]]
with Client(args.url, api_key=args.api_key) as api:
    fresh_model(api, "example-tictactoe", [9, 9, 9], activations=["sigmoid", "softmax"], weight_init="xavier",
                seed=args.seed)
    # the buffer fills first; the job waits in 'buffering' until all ten samples are there
    job = api.train("example-tictactoe", min_samples=10, epochs=args.epochs, batch_size=10, learning_rate=0.05)
    print(f"job {job.id} is {job.status} until 10 samples are buffered")
    api.add_samples("example-tictactoe", x, targets)
    record = job.wait(progress=True)
    predicted = api.output("example-tictactoe", x)["predictions"]
    correct = int(np.sum(np.array(predicted) == targets.argmax(axis=1)))
    plot_history("tictactoe", record["history"])
    report("tictactoe", {"correct": f"{correct}/10", "final_loss": record["history"][-1]["loss"],
                         "epochs": args.epochs})
