"""Routes of the Django example shop (the orders API is include()d, as in a real project)."""

from django.urls import include, path

from shop import views

orders = [path("orders/<int:order_id>", views.get_order)]

urlpatterns = [
    path("health", views.health),
    path("login", views.login),
    path("challenge", views.challenge),
    path("products", views.list_products),
    path("products/<int:product_id>", views.get_product),
    path("coupons/<str:code>/redeem", views.redeem_coupon),
    path("api/v1/", include(orders)),
]
