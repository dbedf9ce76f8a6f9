-- The S3 secret for a DuckLake catalog's data files under scope (the data path), from the
-- standard AWS variables; endpoint, use_ssl and url_style for an S3-compatible server. A line
-- whose value is not given is left out.
CREATE SECRET prox_catalog_s3 (
    TYPE s3
    , SCOPE {scope}
    , REGION {region}
    , KEY_ID {key_id}
    , SECRET {secret}
    , SESSION_TOKEN {session_token}
    , ENDPOINT {endpoint}
    , USE_SSL {use_ssl}
    , URL_STYLE {url_style}
)
