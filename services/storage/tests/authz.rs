//! Authorization rules over real gRPC: tokens from the real auth service, product ownership
//! from the real catalog service (both in-process).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use storemesh_proto::auth::v1::Role;
use storemesh_proto::storage::v1 as pb;
use storemesh_testkit::RedisServer;
use tonic::Code;

fn with<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    match token {
        Some(token) => bearer(message, token),
        None => tonic::Request::new(message),
    }
}

async fn delete(mesh: &Mesh, token: &str, key: &str) -> Result<bool, tonic::Status> {
    mesh.client()
        .await
        .delete(bearer(pb::DeleteRequest { key: key.into() }, token))
        .await
        .map(|response| response.into_inner().existed)
}

#[tokio::test]
async fn every_call_needs_a_valid_token_and_readers_need_read_access() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    upload(&mut client, &mesh.admin, header("pub/x", ""), b"x")
        .await
        .unwrap();

    // No token, or a token that does not verify.
    for token in [None, Some("not.a.jwt")] {
        let stat = client
            .stat(with(
                token,
                pb::StatRequest {
                    key: "pub/x".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(stat.code(), Code::Unauthenticated, "{token:?}");
        let list = client
            .list(with(token, pb::ListRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(list.code(), Code::Unauthenticated);
        let download = client
            .download(with(
                token,
                pb::DownloadRequest {
                    key: "pub/x".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(download.code(), Code::Unauthenticated);
        let delete = client
            .delete(with(
                token,
                pb::DeleteRequest {
                    key: "pub/x".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(delete.code(), Code::Unauthenticated);
        let requests = futures::stream::iter(messages(header("pub/y", ""), b"y", 1));
        let upload = client.upload(with(token, requests)).await.unwrap_err();
        assert_eq!(upload.code(), Code::Unauthenticated);
    }

    // Admins and service accounts with storage.read read anything; users read only their own
    // products' keys (see reads_follow_product_ownership).
    let (_, customer) = mesh.user("customer@example.com", Role::Customer).await;
    let (_, seller) = mesh.user("seller@example.com", Role::Seller).await;
    for token in [&mesh.admin, &mesh.thumbnailer] {
        download(&mut client, token, "pub/x", 0, 0).await.unwrap();
        list_page(&mut client, token, "", 0, String::new())
            .await
            .unwrap();
    }
    for token in [&customer, &seller] {
        let download = download(&mut client, token, "pub/x", 0, 0)
            .await
            .unwrap_err();
        assert_eq!(download.code(), Code::PermissionDenied);
        let list = list_page(&mut client, token, "", 0, String::new())
            .await
            .unwrap_err();
        assert_eq!(list.code(), Code::PermissionDenied);
    }
    for client_id in [BLIND_CLIENT, CLEANER_CLIENT] {
        let token = mesh.service_token(client_id).await;
        let stat = client
            .stat(bearer(
                pb::StatRequest {
                    key: "pub/x".into(),
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(stat.code(), Code::PermissionDenied, "{client_id}");
        let list = list_page(&mut client, &token, "", 0, String::new())
            .await
            .unwrap_err();
        assert_eq!(list.code(), Code::PermissionDenied);
        let download = download(&mut client, &token, "pub/x", 0, 0)
            .await
            .unwrap_err();
        assert_eq!(download.code(), Code::PermissionDenied);
    }
    // Writing outside `products/` is for admins only.
    for token in [&customer, &seller, &mesh.thumbnailer] {
        let error = upload(&mut client, token, header("pub/z", ""), b"z")
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied);
        assert_eq!(
            delete(&mesh, token, "pub/x").await.unwrap_err().code(),
            Code::PermissionDenied
        );
    }
    assert_eq!(mesh.events().len(), 1, "only the admin's upload");
}

#[tokio::test]
async fn sellers_write_only_originals_of_products_they_own() {
    let mesh = Mesh::start_full(RedisServer::start().unwrap(), Owners::RealCatalog, |_| {}).await;
    let mut client = mesh.client().await;
    let (_, alice) = mesh.user("alice@example.com", Role::Seller).await;
    let (_, bob) = mesh.user("bob@example.com", Role::Seller).await;
    let (_, carol) = mesh.user("carol@example.com", Role::Customer).await;
    let alices = create_product(&mesh, &alice, "Alice's lamp").await;
    let bobs = create_product(&mesh, &bob, "Bob's chair").await;
    let image = jpeg_bytes(10_000);

    let own = format!("products/{alices}/originals/img-1");
    let object = upload(&mut client, &alice, header(&own, "image/jpeg"), &image)
        .await
        .unwrap();
    // The owner is recorded from the token's subject.
    let alice_id = object.owner.clone();
    // key_prefix uploads under one's own product.
    let mut generated = header("", "image/jpeg");
    generated.target = Some(pb::upload_header::Target::KeyPrefix(format!(
        "products/{alices}/originals/"
    )));
    upload(&mut client, &alice, generated, &image)
        .await
        .unwrap();

    let denied = [
        (&alice, format!("products/{bobs}/originals/img-1")),
        (
            &alice,
            "products/01J00000000000000000000000/originals/x".to_owned(),
        ),
        (
            &alice,
            format!("products/{alices}/thumbnails/img-1/w160.jpg"),
        ),
        (&alice, format!("products/{alices}/notes")),
        (&bob, own.clone()),
        (&carol, own.clone()),
    ];
    for (token, key) in &denied {
        let error = upload(&mut client, token, header(key, "image/jpeg"), &image)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied, "{key}");
        if key != &own {
            mesh.assert_nothing_committed(key, 2).await;
        }
    }
    assert_eq!(
        delete(&mesh, &bob, &own).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        delete(&mesh, &carol, &own).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Admins write anywhere, including another seller's product.
    upload(
        &mut client,
        &mesh.admin,
        header(&format!("products/{bobs}/originals/by-admin"), ""),
        &image,
    )
    .await
    .unwrap();
    assert!(delete(&mesh, &alice, &own).await.unwrap());

    let events = mesh.events();
    assert_eq!(events.len(), 4, "three uploads and one delete");
    assert!(events.iter().take(2).all(|event| {
        matches!(&event.data, Some(storemesh_proto::events::v1::event::Data::ObjectCreated(c)) if c.actor == alice_id)
    }));
}

#[tokio::test]
async fn service_accounts_write_what_their_scopes_allow() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let cleaner = mesh.service_token(CLEANER_CLIENT).await;
    let thumb = "products/p1/thumbnails/i1/w160.png";
    let original = "products/p1/originals/i1";
    let notes = "products/p1/notes.txt";

    // The thumbnail function writes and replaces thumbnails, nothing else.
    upload(
        &mut client,
        &mesh.thumbnailer,
        header(thumb, "image/png"),
        &png_bytes(500),
    )
    .await
    .unwrap();
    for key in [original, notes, "misc/x"] {
        let error = upload(
            &mut client,
            &mesh.thumbnailer,
            header(key, ""),
            &png_bytes(500),
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied, "{key}");
    }
    upload(
        &mut client,
        &mesh.admin,
        header(original, ""),
        &jpeg_bytes(500),
    )
    .await
    .unwrap();
    upload(&mut client, &mesh.admin, header(notes, "text/plain"), b"n")
        .await
        .unwrap();
    upload(&mut client, &mesh.admin, header("misc/x", ""), b"x")
        .await
        .unwrap();
    assert_eq!(
        delete(&mesh, &mesh.thumbnailer, original)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // Catalog clean-up deletes anything under products/, uploads nothing, and nothing else.
    let error = upload(&mut client, &cleaner, header(thumb, ""), &png_bytes(10))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(
        delete(&mesh, &cleaner, "misc/x").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    for key in [thumb, original, notes] {
        assert!(delete(&mesh, &cleaner, key).await.unwrap(), "{key}");
    }
    assert!(!delete(&mesh, &cleaner, thumb).await.unwrap());
    // The thumbnail function may also delete thumbnails.
    upload(
        &mut client,
        &mesh.thumbnailer,
        header(thumb, ""),
        &png_bytes(10),
    )
    .await
    .unwrap();
    assert!(delete(&mesh, &mesh.thumbnailer, thumb).await.unwrap());
}

#[tokio::test]
async fn ownership_checks_fail_closed_when_the_catalog_is_down() {
    // Nothing listens on the catalog endpoint.
    let port = storemesh_testkit::free_port().unwrap();
    let mesh = Mesh::start_full(
        RedisServer::start().unwrap(),
        Owners::Catalog(format!("http://127.0.0.1:{port}")),
        |_| {},
    )
    .await;
    let mut client = mesh.client().await;
    let (_, seller) = mesh.user("seller@example.com", Role::Seller).await;
    let key = "products/p1/originals/i1";
    let error = upload(&mut client, &seller, header(key, ""), &jpeg_bytes(100))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    mesh.assert_nothing_committed(key, 0).await;
    // Rules that need no catalog still work.
    upload(
        &mut client,
        &mesh.thumbnailer,
        header("products/p1/thumbnails/i1/a.jpg", ""),
        &jpeg_bytes(100),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn reads_follow_product_ownership() {
    let mesh = Mesh::start_full(RedisServer::start().unwrap(), Owners::RealCatalog, |_| {}).await;
    let mut client = mesh.client().await;
    let (_, alice) = mesh.user("alice@example.com", Role::Seller).await;
    let (_, bob) = mesh.user("bob@example.com", Role::Seller).await;
    let (_, carol) = mesh.user("carol@example.com", Role::Customer).await;
    // A draft: only Alice (and admins, services) may see it.
    let alices = create_product(&mesh, &alice, "Alice's lamp").await;
    let original = format!("products/{alices}/originals/img-1");
    let variant = format!("products/{alices}/thumbnails/img-1/w160.png");
    upload(
        &mut client,
        &alice,
        header(&original, "image/jpeg"),
        &jpeg_bytes(5_000),
    )
    .await
    .unwrap();
    upload(
        &mut client,
        &mesh.thumbnailer,
        header(&variant, "image/png"),
        &png_bytes(500),
    )
    .await
    .unwrap();
    let own_prefixes = [
        format!("products/{alices}/"),
        format!("products/{alices}/originals/"),
    ];

    // The seller, admins and services with storage.read.
    for token in [&alice, &mesh.admin, &mesh.thumbnailer] {
        for key in [&original, &variant] {
            download(&mut client, token, key, 0, 0).await.unwrap();
            client
                .stat(bearer(pb::StatRequest { key: key.clone() }, token))
                .await
                .unwrap();
        }
        for prefix in &own_prefixes {
            let page = list_page(&mut client, token, prefix, 0, String::new())
                .await
                .unwrap();
            assert!(!page.objects.is_empty(), "{prefix}");
        }
    }

    // Another seller and a shopper: neither bytes, nor metadata, nor listings.
    for token in [&bob, &carol] {
        for key in [&original, &variant] {
            let error = download(&mut client, token, key, 0, 0).await.unwrap_err();
            assert_eq!(error.code(), Code::PermissionDenied, "{key}");
            let error = client
                .stat(bearer(pb::StatRequest { key: key.clone() }, token))
                .await
                .unwrap_err();
            assert_eq!(error.code(), Code::PermissionDenied, "{key}");
        }
        let prefixes = own_prefixes.iter().cloned().chain([
            "".to_owned(),
            "products/".to_owned(),
            format!("products/{alices}"),
        ]);
        for prefix in prefixes {
            let error = list_page(&mut client, token, &prefix, 0, String::new())
                .await
                .unwrap_err();
            assert_eq!(error.code(), Code::PermissionDenied, "{prefix:?}");
        }
    }
    // Bob reads his own product, and only through a prefix naming it.
    let bobs = create_product(&mesh, &bob, "Bob's chair").await;
    let page = list_page(
        &mut client,
        &bob,
        &format!("products/{bobs}/"),
        0,
        String::new(),
    )
    .await
    .unwrap();
    assert!(page.objects.is_empty());
}
