//! Uuids as PostgreSQL's `uuid` type reads them, after trimming blanks: 32 hex digits in either
//! case, optionally in braces, with a hyphen allowed after any group of four digits (so
//! `A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11`, `{a0eebc99-…}` and `a0eebc999c0b4ef8bb6d6bb9bd380a11`
//! alike). A payload's `id`, `nura_resolve_user_id` and the migration's legacy ids (through the SQL
//! function `nura_legacy_uuid`, in the plan and in verify) all parse with this one function.

use pgrx::Uuid;

/// The uuid `text` spells, in any form PostgreSQL's `uuid` input accepts, blanks around it
/// allowed; `None` otherwise.
pub fn parse(text: &str) -> Option<Uuid> {
    let s = text.trim().as_bytes();
    let (s, braces) = match s {
        [b'{', rest @ ..] => (rest, true),
        _ => (s, false),
    };
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut bytes = [0u8; 16];
    let mut at = 0;
    for (n, byte) in bytes.iter_mut().enumerate() {
        *byte = hex(*s.get(at)?)? << 4 | hex(*s.get(at + 1)?)?;
        at += 2;
        // As uuid_in: a hyphen may follow the second byte of a pair, but not the last byte.
        if n % 2 == 1 && n < 15 && s.get(at) == Some(&b'-') {
            at += 1;
        }
    }
    if braces {
        if s.get(at) != Some(&b'}') {
            return None;
        }
        at += 1;
    }
    (at == s.len()).then(|| Uuid::from_bytes(bytes))
}

#[cfg(test)]
mod unit_tests {
    use super::parse;

    #[test]
    fn the_forms_of_uuid_in_and_blanks() {
        let canonical = parse("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        for form in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
            "\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\n",
        ] {
            assert_eq!(parse(form), Some(canonical), "{form:?}");
        }
        for bad in [
            "",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1é",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// On generated strings (valid uuids cut, hyphenated, braced, cased and mangled), `parse`
    /// accepts exactly what PostgreSQL's own `uuid` input accepts (of the trimmed text), as the
    /// same uuid.
    #[pg_test]
    fn parse_agrees_with_uuid_in() {
        Spi::run(
            "CREATE FUNCTION pg_temp.try_uuid(t text) RETURNS uuid LANGUAGE plpgsql AS \
             $$ BEGIN RETURN t::uuid; EXCEPTION WHEN invalid_text_representation THEN RETURN NULL; END $$",
        )
        .unwrap();
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let hex = b"0123456789abcdefABCDEF";
        let mut texts = Vec::new();
        for _ in 0..3000 {
            let mut s = String::new();
            if next(4) == 0 {
                s.push('{');
            }
            let digits = match next(8) {
                0 => 31,
                1 => 33,
                _ => 32,
            };
            for i in 0..digits {
                s.push(hex[next(hex.len() as u64) as usize] as char);
                if next(40) == 0 || (i % 4 == 3 && i < 31 && next(2) == 0) {
                    s.push('-');
                }
            }
            match next(6) {
                0 => s.push('}'),
                1 => s.insert(0, ' '),
                2 => s.push_str(" \t"),
                3 => s.push('x'),
                _ => {}
            }
            texts.push(s);
        }
        let sql_reads = Spi::get_one_with_args::<Vec<Option<pgrx::Uuid>>>(
            "SELECT array_agg(pg_temp.try_uuid(btrim(t, E' \\t')) ORDER BY n) \
             FROM unnest($1::text[]) WITH ORDINALITY AS x(t, n)",
            &[texts.clone().into()],
        )
        .unwrap()
        .unwrap();
        let mut accepted = 0;
        for (text, sql) in texts.iter().zip(&sql_reads) {
            assert_eq!(super::parse(text), *sql, "{text:?}");
            accepted += usize::from(sql.is_some());
        }
        assert!(
            accepted > 100 && accepted < 2900,
            "both kinds generated: {accepted}"
        );
    }
}
