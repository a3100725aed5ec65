"""A job-notification receiver to try `notify` with: prints each job record whose X-NN-Signature checks out.

    python examples/notify_receiver.py --port 9000 --secret s3cret

Answers 200 to a signed POST and 401 to a bad signature (the service then retries until
NN_NOTIFY_RETRY_SECONDS). A real receiver should treat the job id as an idempotency key: delivery
is at least once.
"""

import argparse
import hashlib
import hmac
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000, help="port to listen on (127.0.0.1)")
    parser.add_argument("--secret", required=True, help="the `notify.secret` the jobs were submitted with")
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            expected = "sha256=" + hmac.new(args.secret.encode(), body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(self.headers.get("X-NN-Signature", ""), expected)
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if ok:
                job = json.loads(body)
                print(f"{self.headers['X-NN-Event']}: job {job['job_id']} of model {job['model_id']} "
                      f"({job['duration_seconds']} s, metrics {job.get('metrics')})", flush=True)
            else:
                print("refused a notification with a bad signature", flush=True)

        def log_message(self, *_):
            pass

    print(f"listening on http://127.0.0.1:{args.port}/", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
