"""Create the artifact bucket on the S3-compatible store, once it answers; exit 0 if it exists.

Run by compose.yaml's create-bucket service before the MLflow server starts. Reads
MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and MLFLOW_BUCKET.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError
from botocore.exceptions import ConnectionError as StoreUnreachable

ATTEMPTS, PAUSE_S = 60, 1.0


def main() -> int:
    bucket = os.environ["MLFLOW_BUCKET"]
    endpoint = os.environ["MLFLOW_S3_ENDPOINT_URL"]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for _ in range(ATTEMPTS):
        try:
            s3.create_bucket(Bucket=bucket)
            print(f"created bucket {bucket} on {endpoint}")
            return 0
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                print(f"bucket {bucket} exists on {endpoint}")
                return 0
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status < 500:  # Refused (credentials, name): waiting will not help.
                raise
        except StoreUnreachable:
            pass  # The store is still starting.
        time.sleep(PAUSE_S)
    print(f"no S3 store answered at {endpoint} in {ATTEMPTS * PAUSE_S:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
