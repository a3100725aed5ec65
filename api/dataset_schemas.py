"""Response bodies of the datasets resource (`api/routes/datasets.py`); uploads are files, not JSON schemas."""

from datetime import datetime, timezone

from pydantic import BaseModel, Field


class TargetSummary(BaseModel):
    shape: list[int] = Field(description="Shape of the targets: [n] (a class index or value per sample) or [n, k].")
    min: float = Field(description="Smallest target value.")
    max: float = Field(description="Largest target value.")
    mean: float = Field(description="Mean target value.")
    classes: list[int] | None = Field(description="Integer targets (or one-hot rows): the classes present; null otherwise.")
    counts: list[int] | None = Field(description="Samples per class, in the order of `classes`.")


class DatasetPublic(BaseModel):
    dataset_id: str = Field(description="Id of the dataset; give it as `dataset` to jobs, searches, /evaluate and /samples.")
    name: str | None = Field(description="The name given at upload.")
    n_samples: int = Field(description="Samples (rows).")
    n_features: int = Field(description="Values per input vector.")
    dtype: str = Field(description="Floating point type of the inputs as stored: float32 or float64.")
    targets: TargetSummary = Field(description="What the targets hold.")
    bytes: int = Field(description="Size of the stored NPZ file (GET /datasets/{dataset_id}/download).")
    sha256: str = Field(description="SHA-256 of the stored NPZ file: the same as the uploaded file when it was an "
                                    "uncompressed NPZ of float32/float64 `inputs` and `targets`.")
    format: str = Field(description="Format of the upload: npz, csv or json.")
    created_at: datetime = Field(description="When the dataset was uploaded (UTC).")
    owner: str | None = Field(None, description="Name of the API key that uploaded it (null without keys); under "
                                                "NN_TENANCY only that name (and admin keys) see and use it.")

    @classmethod
    def from_record(cls, r) -> "DatasetPublic":
        return cls(**{**r.__dict__, "created_at": datetime.fromtimestamp(r.created_at, tz=timezone.utc)})


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic] = Field(description="One page of datasets, oldest first.")
    count: int = Field(description="Total number of datasets.")
    next_offset: int | None = Field(None, description="Offset of the next page; null after the last (as the model and "
                                                      "job lists say it).")
