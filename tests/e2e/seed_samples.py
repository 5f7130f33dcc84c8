"""Client samples copied verbatim from the seed documents, run by the tests with only the
host (and the placeholders the documents ask to replace) substituted.

seeds/001 (Marqo reverse image search): the three cURL samples and the two JavaScript
``fetch`` samples. Its base64 sample's payload is elided in the document ("/9j/4AAQ...QX...");
the test puts a real photo's base64 in its place.
"""

MARQO_HOST = "https://ecom.marqo-ep.ai"
MARQO_ELIDED_BASE64 = "/9j/4AAQSkZJRgABAQAAAQABAAD//gAMQX..."

MARQO_CURL = [
    """curl -X POST https://ecom.marqo-ep.ai/api/v1/indexes/{index_name}/reverse-image-search \\
-H "x-marqo-index-id: {index_id}" \\
-H "Content-Type: application/json" \\
-d '{
"q": "https://example.com/image.jpg",
"limit": 10
}'""",
    """curl -X POST https://ecom.marqo-ep.ai/api/v1/indexes/{index_name}/reverse-image-search \\
-H "x-marqo-index-id: {index_id}" \\
-H "Content-Type: application/json" \\
-d '{
"q": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD//gAMQX..."
}'""",
    """curl -X POST https://ecom.marqo-ep.ai/api/v1/indexes/{index_name}/reverse-image-search \\
-H "x-marqo-index-id: {index_id}" \\
-H "Content-Type: application/json" \\
-d '{
"q": "https://example.com/sneaker.jpg",
"filter": "brand:Nike AND price:[* TO 200]"
}'""",
]

MARQO_FETCH = [
    """fetch(
"https://ecom.marqo-ep.ai/api/v1/indexes/{index_name}/reverse-image-search",
{
method: "POST",
headers: {
"x-marqo-index-id": "{index_id}",
"Content-Type": "application/json",
},
body: JSON.stringify({
q: "https://example.com/image.jpg",
limit: 10,
}),
}
);""",
    """fetch(
"https://ecom.marqo-ep.ai/api/v1/indexes/{index_name}/reverse-image-search",
{
method: "POST",
headers: {
"x-marqo-index-id": "{index_id}",
"Content-Type": "application/json",
},
body: JSON.stringify({
q: "https://example.com/sneaker.jpg",
filter: "brand:Nike AND price:[* TO 200]",
}),
}
);""",
]
