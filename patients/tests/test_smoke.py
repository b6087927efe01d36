from conftest import client_for


def test_it_shows_the_record_to_a_secretary(secretary, patient):
    response = client_for(secretary).get(patient.get_absolute_url())
    assert response.status_code == 200
    assert "LEFÈVRE Anne-Marie" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
