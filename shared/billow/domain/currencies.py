"""The currencies Billow bills in, as OpenMeter lists them (`GET /api/v1/info/currencies`: code, name, symbol and
subunits, the number of decimal places of the minor unit). The codes and minor units are billow.domain.money's ISO
4217 table (every code `Currency.of` accepts); names are ISO 4217's English names, symbols the usual local sign
(the code where there is none in common use)."""

from __future__ import annotations

from typing import Any, Final

from billow.domain.money import ISO_4217_MINOR_UNITS

_NAMES: Final = """
AED UAE Dirham|د.إ;AFN Afghani|؋;ALL Lek|L;AMD Armenian Dram|֏;AOA Kwanza|Kz;ARS Argentine Peso|$;AUD Australian Dollar|A$;
AWG Aruban Florin|ƒ;AZN Azerbaijan Manat|₼;BAM Convertible Mark|KM;BBD Barbados Dollar|Bds$;BDT Taka|৳;
BGN Bulgarian Lev|лв;BHD Bahraini Dinar|.د.ب;BIF Burundi Franc|FBu;BMD Bermudian Dollar|$;BND Brunei Dollar|B$;
BOB Boliviano|Bs.;BOV Mvdol|BOV;BRL Brazilian Real|R$;BSD Bahamian Dollar|B$;BTN Ngultrum|Nu.;BWP Pula|P;
BYN Belarusian Ruble|Br;BZD Belize Dollar|BZ$;CAD Canadian Dollar|CA$;CDF Congolese Franc|FC;CHE WIR Euro|CHE;
CHF Swiss Franc|CHF;CHW WIR Franc|CHW;CLF Unidad de Fomento|UF;CLP Chilean Peso|$;CNY Yuan Renminbi|¥;
COP Colombian Peso|$;COU Unidad de Valor Real|COU;CRC Costa Rican Colon|₡;CUP Cuban Peso|$;CVE Cabo Verde Escudo|Esc;
CZK Czech Koruna|Kč;DJF Djibouti Franc|Fdj;DKK Danish Krone|kr.;DOP Dominican Peso|RD$;DZD Algerian Dinar|د.ج;
EGP Egyptian Pound|E£;ERN Nakfa|Nfk;ETB Ethiopian Birr|Br;EUR Euro|€;FJD Fiji Dollar|FJ$;FKP Falkland Islands Pound|£;
GBP Pound Sterling|£;GEL Lari|₾;GHS Ghana Cedi|GH₵;GIP Gibraltar Pound|£;GMD Dalasi|D;GNF Guinean Franc|FG;
GTQ Quetzal|Q;GYD Guyana Dollar|G$;HKD Hong Kong Dollar|HK$;HNL Lempira|L;HTG Gourde|G;HUF Forint|Ft;IDR Rupiah|Rp;
ILS New Israeli Sheqel|₪;INR Indian Rupee|₹;IQD Iraqi Dinar|ع.د;IRR Iranian Rial|﷼;ISK Iceland Krona|kr;
JMD Jamaican Dollar|J$;JOD Jordanian Dinar|د.ا;JPY Yen|¥;KES Kenyan Shilling|KSh;KGS Som|с;KHR Riel|៛;
KMF Comorian Franc|CF;KPW North Korean Won|₩;KRW Won|₩;KWD Kuwaiti Dinar|د.ك;KYD Cayman Islands Dollar|CI$;
KZT Tenge|₸;LAK Lao Kip|₭;LBP Lebanese Pound|ل.ل;LKR Sri Lanka Rupee|Rs;LRD Liberian Dollar|L$;LSL Loti|L;
LYD Libyan Dinar|ل.د;MAD Moroccan Dirham|د.م.;MDL Moldovan Leu|L;MGA Malagasy Ariary|Ar;MKD Denar|ден;MMK Kyat|K;
MNT Tugrik|₮;MOP Pataca|MOP$;MRU Ouguiya|UM;MUR Mauritius Rupee|₨;MVR Rufiyaa|Rf;MWK Malawi Kwacha|MK;
MXN Mexican Peso|MX$;MXV Mexican Unidad de Inversion (UDI)|MXV;MYR Malaysian Ringgit|RM;MZN Mozambique Metical|MT;
NAD Namibia Dollar|N$;NGN Naira|₦;NIO Cordoba Oro|C$;NOK Norwegian Krone|kr;NPR Nepalese Rupee|रू;
NZD New Zealand Dollar|NZ$;OMR Rial Omani|ر.ع.;PAB Balboa|B/.;PEN Sol|S/;PGK Kina|K;PHP Philippine Peso|₱;
PKR Pakistan Rupee|₨;PLN Zloty|zł;PYG Guarani|₲;QAR Qatari Rial|ر.ق;RON Romanian Leu|lei;RSD Serbian Dinar|дин.;
RUB Russian Ruble|₽;RWF Rwanda Franc|FRw;SAR Saudi Riyal|ر.س;SBD Solomon Islands Dollar|SI$;SCR Seychelles Rupee|₨;
SDG Sudanese Pound|ج.س.;SEK Swedish Krona|kr;SGD Singapore Dollar|S$;SHP Saint Helena Pound|£;SLE Leone|Le;
SOS Somali Shilling|Sh.So.;SRD Surinam Dollar|$;SSP South Sudanese Pound|SS£;STN Dobra|Db;SVC El Salvador Colon|₡;
SYP Syrian Pound|£S;SZL Lilangeni|E;THB Baht|฿;TJS Somoni|SM;TMT Turkmenistan New Manat|m;TND Tunisian Dinar|د.ت;
TOP Pa’anga|T$;TRY Turkish Lira|₺;TTD Trinidad and Tobago Dollar|TT$;TWD New Taiwan Dollar|NT$;
TZS Tanzanian Shilling|TSh;UAH Hryvnia|₴;UGX Uganda Shilling|USh;USD US Dollar|$;USN US Dollar (Next day)|USN;
UYI Uruguay Peso en Unidades Indexadas (UI)|UYI;UYU Peso Uruguayo|$U;UYW Unidad Previsional|UYW;UZS Uzbekistan Sum|soʻm;
VED Bolívar Soberano|Bs.D;VES Bolívar Soberano|Bs.S;VND Dong|₫;VUV Vatu|VT;WST Tala|WS$;XAF CFA Franc BEAC|FCFA;
XCD East Caribbean Dollar|EC$;XCG Caribbean Guilder|Cg;XOF CFA Franc BCEAO|CFA;XPF CFP Franc|₣;YER Yemeni Rial|﷼;
ZAR Rand|R;ZMW Zambian Kwacha|ZK;ZWG Zimbabwe Gold|ZiG
"""


def _table() -> dict[str, tuple[str, str]]:
    out = {}
    for entry in _NAMES.replace("\n", "").split(";"):
        code, rest = entry.split(" ", 1)
        name, symbol = rest.rsplit("|", 1)
        out[code] = (name, symbol)
    return out


NAMES: Final = _table()
assert set(NAMES) == set(ISO_4217_MINOR_UNITS), set(NAMES) ^ set(ISO_4217_MINOR_UNITS)


def list_currencies() -> list[dict[str, Any]]:
    """OpenMeter's `Currency` for every code Billow bills in, by code."""
    return [{"code": code, "name": NAMES[code][0], "symbol": NAMES[code][1], "subunits": ISO_4217_MINOR_UNITS[code]}
            for code in sorted(ISO_4217_MINOR_UNITS)]
