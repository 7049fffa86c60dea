//! Just enough `multipart/form-data` (RFC 7578) for `POST /v1/files`: named parts, a
//! file part's filename, each part's bytes. Malformed bodies are refused, saying how.

/// One part of the form.
#[derive(Debug, Clone, PartialEq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// A quoted or bare parameter of a `Content-Disposition` header.
fn param(header: &str, key: &str) -> Option<String> {
    header.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Split `body` into its parts.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delim = format!("--{boundary}");
    let mut pos =
        find(body, delim.as_bytes(), 0).ok_or("the multipart body has no boundary")? + delim.len();
    let next_delim = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return Err("a multipart boundary is not followed by CRLF".into());
        }
        let head_start = pos + 2;
        let head_end =
            find(body, b"\r\n\r\n", head_start).ok_or("a multipart part has no header end")?;
        let head = std::str::from_utf8(&body[head_start..head_end])
            .map_err(|_| "a part's headers are not UTF-8")?;
        let disposition = head
            .split("\r\n")
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then_some(v)
            })
            .ok_or("a multipart part has no Content-Disposition")?;
        let name = param(disposition, "name").ok_or("a multipart part has no name")?;
        let data_start = head_end + 4;
        let data_end = find(body, next_delim.as_bytes(), data_start)
            .ok_or("the multipart body ends without its closing boundary")?;
        parts.push(Part {
            name,
            filename: param(disposition, "filename"),
            data: &body[data_start..data_end],
        });
        pos = data_end + next_delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_with_a_field_and_a_file_is_read() {
        let ct = "multipart/form-data; boundary=\"xYz\"";
        let b = boundary(ct).unwrap_or_default();
        assert_eq!(b, "xYz");
        let body = b"--xYz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--xYz\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{\"a\":1}\r\n{\"b\":2}\r\n--xYz--\r\n";
        let parts = parse(body, &b).unwrap_or_default();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\r\n{\"b\":2}");
        assert!(parse(
            b"--xYz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
            "xYz"
        )
        .is_err());
        assert!(boundary("application/json").is_none());
    }
}
